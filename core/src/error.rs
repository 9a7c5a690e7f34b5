//! The crate's error type. Variants carry the ids and paths involved; `kind()` is what the
//! CRI layer (and only it, in `cri::status`) maps to a gRPC code.

use std::path::PathBuf;

/// What kind of failure an [`Error`] is, independent of the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    InvalidArgument,
    NotFound,
    FailedPrecondition,
    DeadlineExceeded,
    Unimplemented,
    Internal,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("{what} {id:?} not found")]
    NotFound { what: &'static str, id: String },
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} is not implemented by podrun yet")]
    Unimplemented(&'static str),
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("CNI plugin {plugin:?} failed on {command} of network {network:?}: {message}")]
    Cni {
        plugin: String,
        command: &'static str,
        network: String,
        message: String,
    },
    #[error("shim of pod {pod}: {message}")]
    Shim { pod: String, message: String },
    #[error("{what} timed out after {secs}s")]
    Timeout { what: String, secs: u64 },
    #[error("{0}")]
    Internal(String),
    #[error("{cause}; rolling back also failed: {rollback}")]
    Rollback {
        cause: Box<Error>,
        rollback: Box<Error>,
    },
}

impl Error {
    pub fn kind(&self) -> Kind {
        match self {
            Error::InvalidArgument { .. } => Kind::InvalidArgument,
            Error::NotFound { .. } => Kind::NotFound,
            Error::FailedPrecondition(_) => Kind::FailedPrecondition,
            Error::Unimplemented(_) => Kind::Unimplemented,
            Error::Timeout { .. } => Kind::DeadlineExceeded,
            Error::Rollback { cause, .. } => cause.kind(),
            Error::Io { .. }
            | Error::Sys { .. }
            | Error::Cni { .. }
            | Error::Shim { .. }
            | Error::Internal(_) => Kind::Internal,
        }
    }

    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }

    pub fn io(what: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Error::Io { what, path, source }
    }

    pub fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> Self {
        let what = what.into();
        move |source| Error::Sys { what, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
