//! The one error type of the library.
//!
//! Every error carries a [`ErrorKind`] a caller can act on (the CLI maps kinds
//! to qemu-img's exit codes) and a one-line message. Messages about an image
//! name the file, the structure and, where there is one, the offset, e.g.
//! `Unsupported cluster size: 2^8 (qcow2 header of 'a.qcow2', cluster_bits at offset 20)`.

use std::fmt;
use std::io;

/// What went wrong, coarsely enough for a caller to decide what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// A file could not be found.
    NotFound,
    /// The operating system refused access.
    PermissionDenied,
    /// An image's metadata is invalid or violates a limit.
    InvalidImage,
    /// The image uses a feature diskimg does not implement.
    Unsupported,
    /// The caller asked for something impossible (bad option, out of range).
    InvalidArgument,
    /// A write to an image opened read-only, or to an image that refuses writes.
    ReadOnly,
    /// An I/O error from the operating system.
    Io,
}

/// The library's error: a kind and a message that names the file, the
/// structure and the offset where it applies.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<io::Error>,
}

/// The library's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Error {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Metadata of an image is invalid.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidImage, message)
    }

    /// A feature the image uses is not implemented.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }

    /// The caller's request is impossible.
    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }

    /// A write was attempted on something that refuses writes.
    pub fn read_only(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::ReadOnly, message)
    }

    /// An OS error, with `context` saying what was being done
    /// (e.g. `reading 'a.qcow2' at offset 65536`).
    pub fn io(err: io::Error, context: impl Into<String>) -> Self {
        let kind = match err.kind() {
            io::ErrorKind::NotFound => ErrorKind::NotFound,
            io::ErrorKind::PermissionDenied => ErrorKind::PermissionDenied,
            _ => ErrorKind::Io,
        };
        let context = context.into();
        let message = if context.is_empty() {
            os_message(&err)
        } else {
            format!("{}: {}", context, os_message(&err))
        };
        Error {
            kind,
            message,
            source: Some(err),
        }
    }

    /// The kind of error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The message, without any prefix.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// The same error with `prefix: ` put before its message.
    pub fn context(mut self, prefix: impl fmt::Display) -> Self {
        self.message = format!("{}: {}", prefix, self.message);
        self
    }
}

/// The OS's wording of an I/O error, without Rust's " (os error N)" suffix,
/// as QEMU prints it (`No such file or directory`).
pub fn os_message(err: &io::Error) -> String {
    match err.raw_os_error() {
        Some(code) => {
            // SAFETY: strerror returns a pointer to a static or thread-local
            // NUL-terminated string for any errno value.
            let s = unsafe { std::ffi::CStr::from_ptr(libc::strerror(code)) };
            s.to_string_lossy().into_owned()
        }
        None => err.to_string(),
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_use_the_os_wording_without_suffix() {
        let e = Error::io(io::Error::from_raw_os_error(libc::ENOENT), "");
        assert_eq!(e.message(), "No such file or directory");
        assert_eq!(e.kind(), ErrorKind::NotFound);
    }

    #[test]
    fn context_prefixes_the_message() {
        let e = Error::invalid("bad").context("Could not open 'x'");
        assert_eq!(e.to_string(), "Could not open 'x': bad");
    }
}
