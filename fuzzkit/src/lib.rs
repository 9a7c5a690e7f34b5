//! A small mutation fuzzer that runs on the stable toolchain as an ordinary test, for the
//! parsers that take untrusted input (image references, manifests and configs, hosts.toml,
//! CNI results, SPDY frames, WebSocket channels).
//!
//! Each target starts from seed inputs and mutates them (bit flips, random and boundary
//! bytes, insertions, deletions, duplications, dictionary tokens, splices of two inputs)
//! for a time budget, calling the check on every input. A check fails by panicking; the
//! input that made it panic is written to `target/fuzz-crashes/` and the test fails with
//! its path. No coverage guidance: cheap enough to run in CI on every change.
//!
//! - `PODRUN_FUZZ_SECONDS`: budget per target (default 2).
//! - `PODRUN_FUZZ_SEED`: the random seed (default: from the clock; printed either way).
//! - `PODRUN_FUZZ_REPLAY`: a file to run the check on once, instead of fuzzing.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Inputs are kept below this size.
const MAX_LEN: usize = 64 * 1024;

/// What one run did.
#[derive(Debug)]
pub struct Report {
    pub executions: u64,
    pub seed: u64,
}

/// xorshift64*: small, fast, and enough for choosing mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn budget() -> Duration {
    let secs = std::env::var("PODRUN_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(secs.max(0.0))
}

fn seed() -> u64 {
    std::env::var("PODRUN_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, tokens: &[&[u8]], other: &[u8]) {
    const BOUNDARY: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'/', b':', b'.'];
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(9) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 if len > 0 => {
                let i = rng.below(len);
                input[i] = BOUNDARY[rng.below(BOUNDARY.len())];
            }
            3 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(i..i, bytes);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                input.drain(i..i + n);
            }
            5 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let copy = input[i..i + n].to_vec();
                let at = rng.below(len + 1);
                for _ in 0..=rng.below(8) {
                    input.splice(at..at, copy.iter().copied());
                }
            }
            6 if !tokens.is_empty() => {
                let t = tokens[rng.below(tokens.len())];
                let i = rng.below(len + 1);
                input.splice(i..i, t.iter().copied());
            }
            7 if !other.is_empty() => {
                let (i, j) = (rng.below(len + 1), rng.below(other.len()));
                input.truncate(i);
                input.extend_from_slice(&other[j..]);
            }
            _ if len > 0 => input.truncate(rng.below(len)),
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(MAX_LEN);
}

fn save_crash(name: &str, input: &[u8]) -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .map_or_else(|| PathBuf::from("target"), |p| p.join("target"))
        })
        .join("fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{name}-{hash:016x}.bin"));
    let _ = std::fs::write(&path, input);
    path
}

/// Fuzzes `check` from `seeds` (with `tokens` as a dictionary) for the budget; panics,
/// naming the saved input, when `check` panics on one.
pub fn fuzz(name: &str, seeds: &[&[u8]], tokens: &[&[u8]], check: impl Fn(&[u8])) -> Report {
    if let Some(path) = std::env::var_os("PODRUN_FUZZ_REPLAY") {
        let input = std::fs::read(&path).expect("PODRUN_FUZZ_REPLAY");
        check(&input);
        return Report {
            executions: 1,
            seed: 0,
        };
    }
    let seed = seed();
    let mut rng = Rng(seed);
    let corpus: Vec<Vec<u8>> = match seeds.is_empty() {
        true => vec![Vec::new()],
        false => seeds.iter().map(|s| s.to_vec()).collect(),
    };
    // Targets in one test binary take turns: the panic hook is the process's.
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let deadline = Instant::now() + budget();
    let mut executions = 0u64;
    let mut current = corpus[0].clone();
    let quiet = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut crash = None;
    for input in corpus.iter() {
        executions += 1;
        if catch_unwind(AssertUnwindSafe(|| check(input))).is_err() {
            crash = Some(input.clone());
            break;
        }
    }
    while crash.is_none() && Instant::now() < deadline {
        // Mostly walk on from the last input; now and then start again from a seed.
        if rng.below(8) == 0 {
            current = corpus[rng.below(corpus.len())].clone();
        }
        let other = &corpus[rng.below(corpus.len())];
        mutate(&mut rng, &mut current, tokens, other);
        executions += 1;
        if catch_unwind(AssertUnwindSafe(|| check(&current))).is_err() {
            crash = Some(current.clone());
        }
    }
    std::panic::set_hook(quiet);
    if let Some(input) = crash {
        let path = save_crash(name, &input);
        // Run it again with the normal hook, so the panic's message is printed.
        let again = catch_unwind(AssertUnwindSafe(|| check(&input)));
        panic!(
            "fuzz target {name} (seed {seed}) failed on the input saved at {} ({} bytes; replay with PODRUN_FUZZ_REPLAY=that file){}",
            path.display(),
            input.len(),
            if again.is_ok() { " [did not fail again]" } else { "" },
        );
    }
    eprintln!("fuzz target {name}: {executions} executions, seed {seed}, no failure");
    Report { executions, seed }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_check_is_found_and_its_input_saved() {
        std::env::set_var("PODRUN_FUZZ_SEED", "7");
        let result = catch_unwind(|| {
            fuzz("selftest", &[b"abc"], &[b"BOOM"], |input| {
                assert!(!input.windows(4).any(|w| w == b"BOOM"), "found it");
            })
        });
        let message = match result {
            Err(e) => e.downcast_ref::<String>().cloned().unwrap_or_default(),
            Ok(report) => panic!("not found in {} executions", report.executions),
        };
        assert!(message.contains("selftest-"), "{message}");
        let path = message
            .split("saved at ")
            .nth(1)
            .unwrap()
            .split(' ')
            .next()
            .unwrap();
        assert!(std::fs::read(path)
            .unwrap()
            .windows(4)
            .any(|w| w == b"BOOM"));
        let _ = std::fs::remove_file(path);
    }
}
