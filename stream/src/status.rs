//! How a session ends, on the error stream: from v4 on a JSON `metav1.Status` (success, or
//! failure with reason `NonZeroExitCode` and the code as an `ExitCode` cause); before v4,
//! nothing on success and the error's text otherwise.

use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code.
    Exited(i32),
    /// It could not run, or the session broke, for this reason.
    Failed(String),
}

/// What the server writes on the error stream for protocol `version`.
pub fn encode(outcome: &Outcome, version: u8) -> Vec<u8> {
    let status = match outcome {
        Outcome::Exited(0) => json!({"metadata": {}, "status": "Success"}),
        Outcome::Exited(code) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("command terminated with non-zero exit code: exit status {code}"),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        }),
        Outcome::Failed(why) => json!({
            "metadata": {},
            "status": "Failure",
            "message": format!("Internal error occurred: {why}"),
            "reason": "InternalError",
            "details": {"causes": [{"message": why}]},
            "code": 500,
        }),
    };
    match (version >= 4, outcome) {
        (true, _) => status.to_string().into_bytes(),
        (false, Outcome::Exited(0)) => Vec::new(),
        (false, Outcome::Exited(code)) => {
            format!("command terminated with non-zero exit code: exit status {code}").into_bytes()
        }
        (false, Outcome::Failed(why)) => why.clone().into_bytes(),
    }
}

/// What a client makes of the error stream's content.
pub fn decode(data: &[u8], version: u8) -> Outcome {
    if data.iter().all(u8::is_ascii_whitespace) {
        return Outcome::Exited(0);
    }
    if version < 4 {
        return Outcome::Failed(String::from_utf8_lossy(data).into_owned());
    }
    let Ok(status) = serde_json::from_slice::<Value>(data) else {
        return Outcome::Failed(String::from_utf8_lossy(data).into_owned());
    };
    if status["status"] == "Success" {
        return Outcome::Exited(0);
    }
    let code = (status["reason"] == "NonZeroExitCode")
        .then(|| status["details"]["causes"].as_array())
        .flatten()
        .into_iter()
        .flatten()
        .find(|c| c["reason"] == "ExitCode")
        .and_then(|c| c["message"].as_str()?.parse().ok());
    match code {
        Some(code) => Outcome::Exited(code),
        None => Outcome::Failed(status["message"].as_str().unwrap_or("failed").to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_survive_the_status_both_ways() {
        for o in [Outcome::Exited(0), Outcome::Exited(3)] {
            assert_eq!(decode(&encode(&o, 4), 4), o);
        }
        let failed = decode(&encode(&Outcome::Failed("no such container".into()), 4), 4);
        assert!(matches!(failed, Outcome::Failed(m) if m.contains("no such container")));
        let v4 = String::from_utf8(encode(&Outcome::Exited(0), 4)).unwrap();
        assert_eq!(v4, r#"{"metadata":{},"status":"Success"}"#);
        assert!(encode(&Outcome::Exited(0), 3).is_empty());
    }
}
