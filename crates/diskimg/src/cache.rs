//! QEMU's cache modes (`-t` / `-T` of qemu-img and qemu-io).
//!
//! A mode is two independent choices, as QEMU's `bdrv_parse_cache_mode`
//! splits it:
//! - whether files are opened with O_DIRECT (`none`/`off`, `directsync`),
//!   which the library honours for every file an open creates (the image,
//!   its data file and its backing files: QEMU's children inherit the
//!   mode);
//! - how flushes behave: `unsafe` ignores them (the library's
//!   [`OpenOptions::ignore_flush`]); `writethrough` and `directsync` flush
//!   after every write, which is the caller's business (the commands flush
//!   after each write they issue), as QEMU's block layer does it above the
//!   format driver.

use std::fmt;
use std::str::FromStr;

use crate::{Error, OpenOptions};

/// One of QEMU's cache modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CacheMode {
    /// Host page cache; flush on request (QEMU's default for images).
    #[default]
    Writeback,
    /// Host page cache; a flush after every write.
    Writethrough,
    /// O_DIRECT; flush on request (`none`, also spelt `off`).
    None,
    /// O_DIRECT and a flush after every write.
    DirectSync,
    /// Host page cache; flushes are not waited for.
    Unsafe,
}

impl CacheMode {
    /// Whether files are opened with O_DIRECT (QEMU's `cache.direct=on`).
    pub fn direct(self) -> bool {
        matches!(self, CacheMode::None | CacheMode::DirectSync)
    }

    /// Whether every write is followed by a flush (QEMU's write-through).
    pub fn writethrough(self) -> bool {
        matches!(self, CacheMode::Writethrough | CacheMode::DirectSync)
    }

    /// Whether flushes are ignored (QEMU's `cache.no-flush=on`).
    pub fn ignore_flush(self) -> bool {
        self == CacheMode::Unsafe
    }

    /// Sets the options this mode decides: O_DIRECT and ignored flushes.
    pub fn apply(self, opts: &mut OpenOptions) {
        opts.direct = self.direct();
        opts.ignore_flush = self.ignore_flush();
    }
}

impl FromStr for CacheMode {
    type Err = Error;

    /// QEMU's names; the error is QEMU's `Invalid cache option: NAME`.
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s {
            "writeback" => CacheMode::Writeback,
            "writethrough" => CacheMode::Writethrough,
            "none" | "off" => CacheMode::None,
            "directsync" => CacheMode::DirectSync,
            "unsafe" => CacheMode::Unsafe,
            _ => {
                return Err(Error::invalid_argument(format!(
                    "Invalid cache option: {s}"
                )))
            }
        })
    }
}

impl fmt::Display for CacheMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CacheMode::Writeback => "writeback",
            CacheMode::Writethrough => "writethrough",
            CacheMode::None => "none",
            CacheMode::DirectSync => "directsync",
            CacheMode::Unsafe => "unsafe",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_qemu_names() {
        let cases = [
            ("writeback", false, false, false),
            ("writethrough", false, true, false),
            ("none", true, false, false),
            ("off", true, false, false),
            ("directsync", true, true, false),
            ("unsafe", false, false, true),
        ];
        for (name, direct, wt, nf) in cases {
            let m: CacheMode = name.parse().unwrap();
            assert_eq!(
                (m.direct(), m.writethrough(), m.ignore_flush()),
                (direct, wt, nf),
                "{name}"
            );
            let mut o = OpenOptions::default();
            m.apply(&mut o);
            assert_eq!((o.direct, o.ignore_flush), (direct, nf), "{name}");
        }
        let e = "bogus".parse::<CacheMode>().unwrap_err();
        assert_eq!(e.message(), "Invalid cache option: bogus");
        assert_eq!("none".parse::<CacheMode>().unwrap().to_string(), "none");
    }
}
