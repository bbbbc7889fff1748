//! Format names and probing by magic.

use std::fmt;
use std::str::FromStr;

use crate::io::Storage;
use crate::{Error, Result};

/// An image format diskimg implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    /// Raw: guest bytes are file bytes.
    Raw,
    /// QEMU copy-on-write v2/v3.
    Qcow2,
    /// QEMU enhanced disk.
    Qed,
    /// add-cow: a raw image plus a COW bitmap over a backing file.
    AddCow,
}

impl Format {
    /// The name QEMU uses for the format.
    pub fn name(self) -> &'static str {
        match self {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
            Format::Qed => "qed",
            Format::AddCow => "add-cow",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Formats QEMU knows that diskimg does not implement: named in errors
/// instead of being mistaken for raw.
const FOREIGN_FORMATS: &[&str] = &[
    "qcow",
    "vmdk",
    "vdi",
    "vhdx",
    "vpc",
    "vvfat",
    "cloop",
    "dmg",
    "parallels",
    "bochs",
    "luks",
    "file",
    "host_device",
    "nbd",
    "blkdebug",
    "null-co",
    "null-aio",
    "throttle",
    "copy-on-read",
    "preallocate",
    "compress",
    "snapshot-access",
    "ftp",
    "ftps",
    "http",
    "https",
    "iscsi",
    "nfs",
    "ssh",
    "rbd",
];

impl FromStr for Format {
    type Err = Error;

    /// Parses a `-f` argument. Unknown names get QEMU's `Unknown driver`
    /// message; formats QEMU has but diskimg lacks get one naming them.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "raw" => Ok(Format::Raw),
            "qcow2" => Ok(Format::Qcow2),
            "qed" => Ok(Format::Qed),
            "add-cow" => Ok(Format::AddCow),
            other if FOREIGN_FORMATS.contains(&other) => Err(Error::unsupported(format!(
                "Driver '{other}' is not supported by diskimg"
            ))),
            other => Err(Error::invalid_argument(format!("Unknown driver '{other}'"))),
        }
    }
}

const QCOW_MAGIC: &[u8; 4] = b"QFI\xfb";
const QED_MAGIC: &[u8; 4] = b"QED\0";
const ADD_COW_MAGIC: &[u8; 8] = b"ADD_COW\xff";

/// Guesses the format of `storage` from its first bytes, as QEMU's probe
/// does: qcow2 (magic and version >= 2), QED, add-cow, else raw. Images in
/// formats diskimg does not implement are refused rather than read as raw.
pub fn probe(storage: &dyn Storage) -> Result<Format> {
    let mut head = [0u8; 512];
    storage.read_at(&mut head, 0)?;
    if &head[..4] == QCOW_MAGIC {
        let version = u32::from_be_bytes([head[4], head[5], head[6], head[7]]);
        // QEMU's probes: version 1 is the old qcow format, 2 and above
        // qcow2; any other version matches neither, and the file is raw.
        if version >= 2 {
            return Ok(Format::Qcow2);
        }
        if version == 1 {
            return Err(foreign(storage, "qcow (version 1)"));
        }
    }
    if &head[..4] == QED_MAGIC {
        return Ok(Format::Qed);
    }
    if &head[..8] == ADD_COW_MAGIC {
        return Ok(Format::AddCow);
    }
    let foreign_magic: &[(&[u8], usize, &str)] = &[
        (b"KDMV", 0, "vmdk"),
        (b"# Disk DescriptorFile", 0, "vmdk"),
        (b"\x7f\x10\xda\xbe", 0x40, "vdi"),
        (b"vhdxfile", 0, "vhdx"),
        (b"conectix", 0, "vpc"),
        (b"WithoutFreeSpace", 0, "parallels"),
        (b"WithouFreSpacExt", 0, "parallels"),
        (b"LUKS\xba\xbe", 0, "luks"),
        (b"Bochs Virtual HD Image", 0, "bochs"),
    ];
    for (magic, at, name) in foreign_magic {
        if head[*at..].starts_with(magic) {
            return Err(foreign(storage, name));
        }
    }
    Ok(Format::Raw)
}

fn foreign(storage: &dyn Storage, name: &str) -> Error {
    Error::unsupported(format!(
        "'{}' is a {name} image; diskimg does not support that format",
        storage.name()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::MemoryStorage;

    fn probe_bytes(b: &[u8]) -> Result<Format> {
        probe(&MemoryStorage::from_bytes("t", b.to_vec()))
    }

    #[test]
    fn probes_by_magic() {
        assert_eq!(probe_bytes(b"QFI\xfb\0\0\0\x03").unwrap(), Format::Qcow2);
        assert_eq!(probe_bytes(b"QFI\xfb\0\0\0\x02").unwrap(), Format::Qcow2);
        assert!(probe_bytes(b"QFI\xfb\0\0\0\x01").is_err());
        assert_eq!(probe_bytes(b"QFI\xfb\0\0\0\0").unwrap(), Format::Raw);
        assert_eq!(probe_bytes(b"QFI\xfb").unwrap(), Format::Raw);
        assert_eq!(probe_bytes(b"QED\0").unwrap(), Format::Qed);
        assert_eq!(probe_bytes(b"ADD_COW\xff").unwrap(), Format::AddCow);
        assert_eq!(probe_bytes(b"").unwrap(), Format::Raw);
        assert_eq!(probe_bytes(&[0u8; 4096]).unwrap(), Format::Raw);
        assert!(probe_bytes(b"KDMV").is_err());
    }

    #[test]
    fn parses_format_names() {
        assert_eq!("qcow2".parse::<Format>().unwrap(), Format::Qcow2);
        assert_eq!(
            "foo".parse::<Format>().unwrap_err().message(),
            "Unknown driver 'foo'"
        );
    }
}
