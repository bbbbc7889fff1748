//! Creating images: the format-independent options and the entry point
//! [`create`], which validates everything before it touches a file and
//! removes the files it made when writing them fails.
//!
//! Invariants: an existing file at the target path is never truncated
//! before every option has been validated; a failed create leaves no
//! partial file behind (the ones it created are removed).

use std::path::Path;

use super::probe::Format;
use super::qcow2::create::{self as qcow2_create, Qcow2CreateOptions};
use crate::io::{FileStorage, Storage};
use crate::{Error, Result};

/// Sector size: images are created with sizes rounded up to it, as QEMU does.
pub const SECTOR_SIZE: u64 = 512;

/// How much space to allocate at creation (QEMU's `preallocation` option).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Preallocation {
    /// Allocate nothing in advance.
    #[default]
    Off,
    /// qcow2: allocate every L2 table and map every guest cluster.
    Metadata,
    /// Like metadata, and reserve the data space with fallocate.
    Falloc,
    /// Like metadata, and write zeros over the data space.
    Full,
}

impl Preallocation {
    /// Parses QEMU's name of a mode.
    pub fn parse(s: &str) -> Option<Preallocation> {
        match s {
            "off" => Some(Preallocation::Off),
            "metadata" => Some(Preallocation::Metadata),
            "falloc" => Some(Preallocation::Falloc),
            "full" => Some(Preallocation::Full),
            _ => None,
        }
    }

    /// QEMU's name of the mode.
    pub fn name(self) -> &'static str {
        match self {
            Preallocation::Off => "off",
            Preallocation::Metadata => "metadata",
            Preallocation::Falloc => "falloc",
            Preallocation::Full => "full",
        }
    }
}

/// What to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateOptions {
    /// The image format (qcow2 or raw).
    pub format: Format,
    /// Virtual size in bytes; rounded up to a multiple of 512.
    pub size: u64,
    /// Preallocation mode.
    pub preallocation: Preallocation,
    /// qcow2 options (ignored for raw).
    pub qcow2: Qcow2CreateOptions,
}

impl CreateOptions {
    /// Options for a `format` image of `size` bytes, everything else default.
    pub fn new(format: Format, size: u64) -> CreateOptions {
        CreateOptions {
            format,
            size,
            preallocation: Preallocation::Off,
            qcow2: Qcow2CreateOptions::default(),
        }
    }

    /// The size rounded up to whole sectors.
    pub fn rounded_size(&self) -> Result<u64> {
        self.size
            .checked_add(SECTOR_SIZE - 1)
            .map(|s| s & !(SECTOR_SIZE - 1))
            .filter(|&s| s <= i64::MAX as u64)
            .ok_or_else(|| {
                Error::invalid_argument(format!(
                    "Invalid image size specified. Must be between 0 and {}.",
                    i64::MAX
                ))
            })
    }

    /// Checks every option; errors carry QEMU's wording. [`create`] calls
    /// this before it creates any file.
    pub fn validate(&self) -> Result<()> {
        let size = self.rounded_size()?;
        match self.format {
            Format::Raw => {
                if self.preallocation == Preallocation::Metadata {
                    return Err(Error::invalid_argument(
                        "Unsupported preallocation mode: metadata",
                    ));
                }
                Ok(())
            }
            Format::Qcow2 => qcow2_create::plan(&self.qcow2, size, self.preallocation).map(|_| ()),
            other => Err(Error::unsupported(format!(
                "Creating {other} images is not implemented yet"
            ))),
        }
    }
}

/// Creates the image `path` (and, for qcow2, its external data file) as
/// `opts` says. Relative data file names are relative to the current
/// directory, as in QEMU.
pub fn create(path: impl AsRef<Path>, opts: &CreateOptions) -> Result<()> {
    let path = path.as_ref();
    opts.validate()?;
    let size = opts.rounded_size()?;
    match opts.format {
        Format::Raw => {
            let storage = FileStorage::create(path)?;
            let r = write_raw(&storage, size, opts.preallocation);
            if r.is_err() {
                let _ = std::fs::remove_file(path);
            }
            r
        }
        Format::Qcow2 => qcow2_create::create(path, &opts.qcow2, size, opts.preallocation),
        _ => opts.validate(),
    }
}

fn write_raw(storage: &FileStorage, size: u64, prealloc: Preallocation) -> Result<()> {
    storage.set_len(size)?;
    preallocate(storage, 0, size, prealloc)?;
    storage.flush()
}

/// Allocates `[offset, offset + len)` of `storage` as `mode` says: nothing
/// for off and metadata, fallocate for falloc (zeros written where the file
/// system cannot), zeros written for full.
pub(crate) fn preallocate(
    storage: &dyn Storage,
    offset: u64,
    len: u64,
    mode: Preallocation,
) -> Result<()> {
    match mode {
        Preallocation::Off | Preallocation::Metadata => Ok(()),
        Preallocation::Falloc => storage.allocate(offset, len).map_err(|e| {
            e.context(format!(
                "Could not preallocate data for '{}'",
                storage.name()
            ))
        }),
        Preallocation::Full => write_zeros(storage, offset, len),
    }
}

/// Writes zeros over `[offset, offset + len)` in 1 MiB requests.
pub(crate) fn write_zeros(storage: &dyn Storage, offset: u64, len: u64) -> Result<()> {
    let chunk = vec![0u8; 1 << 20];
    let end = offset.saturating_add(len);
    let mut pos = offset;
    while pos < end {
        let n = (end - pos).min(chunk.len() as u64) as usize;
        storage.write_at(&chunk[..n], pos)?;
        pos += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_sizes_round_up_and_preallocate() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.raw");
        let mut o = CreateOptions::new(Format::Raw, 1000);
        o.preallocation = Preallocation::Full;
        create(&p, &o).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), 1024);
        o.preallocation = Preallocation::Metadata;
        assert_eq!(
            create(&p, &o).unwrap_err().message(),
            "Unsupported preallocation mode: metadata"
        );
        // The refused create left the existing file alone.
        assert_eq!(std::fs::metadata(&p).unwrap().len(), 1024);
    }

    #[test]
    fn preallocation_names_round_trip() {
        for p in [
            Preallocation::Off,
            Preallocation::Metadata,
            Preallocation::Falloc,
            Preallocation::Full,
        ] {
            assert_eq!(Preallocation::parse(p.name()), Some(p));
        }
        assert_eq!(Preallocation::parse("bad"), None);
    }
}
