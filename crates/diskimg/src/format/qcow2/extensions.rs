//! qcow2 header extensions: the area between the header and the backing
//! file name (or the end of cluster 0).
//!
//! Invariants enforced by [`Extensions::parse`]: every extension (its 8-byte
//! head and its data) lies inside the area; each known type appears at most
//! once; the backing format name is shorter than 16 bytes; the bitmaps and
//! encryption extensions have their exact sizes and QEMU's limits. Unknown
//! types are skipped.

use super::header::{Header, AUTOCLEAR_BITMAPS};
use crate::{Error, Result};

/// End of the extension area.
pub const EXT_END: u32 = 0;
/// Backing file format name.
pub const EXT_BACKING_FORMAT: u32 = 0xE279_2ACA;
/// Feature name table.
pub const EXT_FEATURE_TABLE: u32 = 0x6803_F857;
/// Persistent bitmaps.
pub const EXT_BITMAPS: u32 = 0x2385_2875;
/// Full disk encryption header pointer.
pub const EXT_CRYPTO: u32 = 0x0537_BE77;
/// External data file name ("DATA").
pub const EXT_DATA_FILE: u32 = 0x4441_5441;
/// Most bitmaps QEMU supports.
pub const MAX_BITMAPS: u32 = 65535;
/// Largest bitmap directory QEMU supports.
pub const MAX_BITMAP_DIRECTORY_SIZE: u64 = 1024 * 65535;

/// One entry of the feature name table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureName {
    /// 0 incompatible, 1 compatible, 2 autoclear.
    pub kind: u8,
    /// Bit number 0..63.
    pub bit: u8,
    /// The name, without padding.
    pub name: String,
}

/// The bitmaps extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BitmapsExt {
    /// Number of bitmaps in the directory.
    pub nb_bitmaps: u32,
    /// Directory size in bytes.
    pub directory_size: u64,
    /// Directory offset (cluster aligned).
    pub directory_offset: u64,
}

/// The full disk encryption header pointer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CryptoExt {
    /// Offset of the encryption header area.
    pub offset: u64,
    /// Length of the area.
    pub length: u64,
}

/// The decoded header extensions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extensions {
    /// Backing file format name.
    pub backing_format: Option<String>,
    /// Feature name table entries (empty when absent).
    pub feature_names: Vec<FeatureName>,
    /// Whether a feature name table was present.
    pub has_feature_table: bool,
    /// The bitmaps extension, when present and consistent.
    pub bitmaps: Option<BitmapsExt>,
    /// The bitmaps extension exists but the autoclear bit is clear: all
    /// bitmaps are inconsistent and the extension is ignored.
    pub bitmaps_inconsistent: bool,
    /// The encryption header pointer.
    pub crypto: Option<CryptoExt>,
    /// External data file name.
    pub data_file: Option<String>,
    /// Types of unknown extensions, in order.
    pub unknown: Vec<u32>,
}

fn be32(b: &[u8], o: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(o..o + 4) {
        x.copy_from_slice(s);
    }
    u32::from_be_bytes(x)
}

fn be64(b: &[u8], o: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(o..o + 8) {
        x.copy_from_slice(s);
    }
    u64::from_be_bytes(x)
}

fn ext_err(msg: impl std::fmt::Display, offset: u64) -> Error {
    Error::invalid(format!("{msg} (qcow2 header extension at offset {offset})"))
}

/// Human name of a known extension type, for messages.
fn type_name(t: u32) -> &'static str {
    match t {
        EXT_BACKING_FORMAT => "backing file format",
        EXT_FEATURE_TABLE => "feature name table",
        EXT_BITMAPS => "bitmaps",
        EXT_CRYPTO => "full disk encryption header pointer",
        EXT_DATA_FILE => "external data file name",
        _ => "unknown",
    }
}

impl Extensions {
    /// Parses the extension area of cluster 0. `cluster0` holds the start of
    /// the file (bytes missing from it read as zeros).
    pub fn parse(cluster0: &[u8], h: &Header) -> Result<Extensions> {
        let mut ext = Extensions::default();
        let end = h.extensions_end();
        let mut off = u64::from(h.header_length);
        let mut seen: Vec<u32> = Vec::new();
        let byte = |o: u64| -> usize { usize::try_from(o).unwrap_or(usize::MAX) };
        while off < end {
            let t = be32(cluster0, byte(off));
            let len = be32(cluster0, byte(off.saturating_add(4)));
            let data_off = off + 8;
            if data_off > end || u64::from(len) > end - data_off {
                return Err(ext_err("Header extension too large", off));
            }
            if t == EXT_END {
                break;
            }
            let data = cluster0
                .get(byte(data_off)..byte(data_off + u64::from(len)))
                .map(|s| s.to_vec())
                .unwrap_or_else(|| {
                    // Past the bytes we were given: zeros, as past EOF.
                    let mut v = vec![0u8; len as usize];
                    let start = byte(data_off).min(cluster0.len());
                    let avail = &cluster0[start..];
                    let n = avail.len().min(v.len());
                    v[..n].copy_from_slice(&avail[..n]);
                    v
                });
            if t != EXT_END && type_name(t) != "unknown" {
                if seen.contains(&t) {
                    return Err(ext_err(
                        format_args!(
                            "Header extension 0x{t:08X} ({}) appears more than once",
                            type_name(t)
                        ),
                        off,
                    ));
                }
                seen.push(t);
            }
            match t {
                EXT_BACKING_FORMAT => {
                    if len >= 16 {
                        return Err(ext_err(
                            format_args!("ERROR: ext_backing_format: len={len} too large (>=16)"),
                            off,
                        ));
                    }
                    ext.backing_format = Some(c_string(&data));
                }
                EXT_FEATURE_TABLE => {
                    ext.has_feature_table = true;
                    for e in data.chunks_exact(48) {
                        let name = c_string(&e[2..48]);
                        if name.is_empty() {
                            break;
                        }
                        ext.feature_names.push(FeatureName {
                            kind: e[0],
                            bit: e[1],
                            name,
                        });
                    }
                }
                EXT_CRYPTO => {
                    if h.crypt_method != 2 {
                        return Err(ext_err(
                            "CRYPTO header extension only expected with LUKS encryption method",
                            off,
                        ));
                    }
                    if len != 16 {
                        return Err(ext_err(
                            format_args!(
                                "CRYPTO header extension size {len}, but expected size 16"
                            ),
                            off,
                        ));
                    }
                    let c = CryptoExt {
                        offset: be64(&data, 0),
                        length: be64(&data, 8),
                    };
                    if c.offset & (h.cluster_size() - 1) != 0 {
                        return Err(ext_err(
                            format_args!(
                                "Encryption header offset '{}' is not a multiple of cluster size '{}'",
                                c.offset,
                                h.cluster_size()
                            ),
                            off,
                        ));
                    }
                    ext.crypto = Some(c);
                }
                EXT_BITMAPS => {
                    if len != 24 {
                        return Err(ext_err("bitmaps_ext: Invalid extension length", off));
                    }
                    if h.autoclear_features & AUTOCLEAR_BITMAPS == 0 {
                        ext.bitmaps_inconsistent = true;
                    } else {
                        if be32(&data, 4) != 0 {
                            return Err(ext_err("bitmaps_ext: Reserved field is not zero", off));
                        }
                        let b = BitmapsExt {
                            nb_bitmaps: be32(&data, 0),
                            directory_size: be64(&data, 8),
                            directory_offset: be64(&data, 16),
                        };
                        if b.nb_bitmaps > MAX_BITMAPS {
                            return Err(ext_err(
                                format_args!(
                                    "bitmaps_ext: Image has {} bitmaps, exceeding the QEMU supported maximum of {MAX_BITMAPS}",
                                    b.nb_bitmaps
                                ),
                                off,
                            ));
                        }
                        if b.nb_bitmaps == 0 {
                            return Err(ext_err("found bitmaps extension with zero bitmaps", off));
                        }
                        if b.directory_offset & (h.cluster_size() - 1) != 0 {
                            return Err(ext_err(
                                "bitmaps_ext: invalid bitmap directory offset",
                                off,
                            ));
                        }
                        if b.directory_size > MAX_BITMAP_DIRECTORY_SIZE {
                            return Err(ext_err(
                                format_args!(
                                    "bitmaps_ext: bitmap directory size ({}) exceeds the maximum supported size ({MAX_BITMAP_DIRECTORY_SIZE})",
                                    b.directory_size
                                ),
                                off,
                            ));
                        }
                        ext.bitmaps = Some(b);
                    }
                }
                EXT_DATA_FILE => {
                    ext.data_file = Some(c_string(&data));
                }
                other => ext.unknown.push(other),
            }
            off = data_off + ((u64::from(len) + 7) & !7);
        }
        Ok(ext)
    }

    /// The names the feature table gives to the incompatible bits of `mask`,
    /// in QEMU's format: `Unsupported qcow2 feature(s): a, b, Unknown
    /// incompatible feature: <hex>`.
    pub fn unsupported_features_message(&self, mut mask: u64) -> String {
        let mut parts: Vec<String> = Vec::new();
        for f in &self.feature_names {
            if f.kind == 0 && f.bit < 64 && mask & (1u64 << f.bit) != 0 {
                parts.push(f.name.clone());
                mask &= !(1u64 << f.bit);
            }
        }
        if mask != 0 {
            parts.push(format!("Unknown incompatible feature: {mask:x}"));
        }
        format!("Unsupported qcow2 feature(s): {}", parts.join(", "))
    }
}

/// A name stored without a terminator, cut at the first NUL if any.
fn c_string(b: &[u8]) -> String {
    let n = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..n]).into_owned()
}

/// Encodes one extension (type, length, data, padding), for tests and the writer.
pub fn encode(t: u32, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + data.len() + 7);
    v.extend_from_slice(&t.to_be_bytes());
    v.extend_from_slice(&(data.len() as u32).to_be_bytes());
    v.extend_from_slice(data);
    while v.len() % 8 != 0 {
        v.push(0);
    }
    v
}

/// Encodes a feature name table entry.
pub fn feature_entry(kind: u8, bit: u8, name: &str) -> Vec<u8> {
    let mut e = vec![0u8; 48];
    e[0] = kind;
    e[1] = bit;
    let n = name.len().min(46);
    e[2..2 + n].copy_from_slice(&name.as_bytes()[..n]);
    e
}

#[cfg(test)]
mod tests {
    use super::super::header::Header;
    use super::*;

    fn hdr() -> Header {
        Header {
            autoclear_features: AUTOCLEAR_BITMAPS,
            ..super::super::header::tests::v3()
        }
    }

    fn image(h: &Header, exts: &[Vec<u8>]) -> Vec<u8> {
        let mut b = h.to_bytes();
        for e in exts {
            b.extend_from_slice(e);
        }
        b.extend_from_slice(&[0u8; 8]);
        b
    }

    fn bitmaps(nb: u32, reserved: u32, size: u64, off: u64) -> Vec<u8> {
        let mut d = Vec::new();
        d.extend_from_slice(&nb.to_be_bytes());
        d.extend_from_slice(&reserved.to_be_bytes());
        d.extend_from_slice(&size.to_be_bytes());
        d.extend_from_slice(&off.to_be_bytes());
        encode(EXT_BITMAPS, &d)
    }

    #[test]
    fn parses_every_known_extension_and_skips_unknown() {
        let h = hdr();
        let mut table = feature_entry(0, 0, "dirty bit");
        table.extend(feature_entry(2, 0, "bitmaps"));
        let b = image(
            &h,
            &[
                encode(EXT_BACKING_FORMAT, b"raw"),
                encode(EXT_DATA_FILE, b"d.raw"),
                encode(0x1234_5678, b"whatever"),
                encode(EXT_FEATURE_TABLE, &table),
                bitmaps(2, 0, 64, 0x50000),
            ],
        );
        let e = Extensions::parse(&b, &h).unwrap();
        assert_eq!(e.backing_format.as_deref(), Some("raw"));
        assert_eq!(e.data_file.as_deref(), Some("d.raw"));
        assert_eq!(e.unknown, vec![0x1234_5678]);
        assert_eq!(e.feature_names.len(), 2);
        assert_eq!(e.feature_names[1].name, "bitmaps");
        assert_eq!(
            e.bitmaps,
            Some(BitmapsExt {
                nb_bitmaps: 2,
                directory_size: 64,
                directory_offset: 0x50000
            })
        );
        assert!(!e.bitmaps_inconsistent);
    }

    #[test]
    fn backing_format_length_limit() {
        let h = hdr();
        let ok = image(&h, &[encode(EXT_BACKING_FORMAT, &[b'a'; 15])]);
        assert!(Extensions::parse(&ok, &h).is_ok());
        let bad = image(&h, &[encode(EXT_BACKING_FORMAT, &[b'a'; 16])]);
        let e = Extensions::parse(&bad, &h).unwrap_err().to_string();
        assert!(
            e.contains("ERROR: ext_backing_format: len=16 too large (>=16)"),
            "{e}"
        );
    }

    #[test]
    fn extension_must_end_before_backing_name_or_cluster_end() {
        let mut h = hdr();
        // Extension of 8 bytes ends exactly at the backing name.
        h.backing_file_offset = 112 + 16;
        let b = image(&h, &[encode(0x99, &[1u8; 8])]);
        assert!(Extensions::parse(&b, &h).is_ok());
        h.backing_file_offset = 112 + 15;
        let e = Extensions::parse(&b, &h).unwrap_err().to_string();
        assert!(e.contains("Header extension too large"), "{e}");
        // Length running past the end of cluster 0.
        let mut h = hdr();
        h.cluster_bits = 9;
        let b = image(&h, &[encode(0x99, &[0u8; 392])]);
        assert!(Extensions::parse(&b, &h).is_ok());
        let b = image(&h, &[encode(0x99, &[0u8; 393])]);
        assert!(Extensions::parse(&b, &h).is_err());
    }

    #[test]
    fn duplicates_are_refused() {
        let h = hdr();
        let b = image(
            &h,
            &[encode(EXT_DATA_FILE, b"a"), encode(EXT_DATA_FILE, b"b")],
        );
        let e = Extensions::parse(&b, &h).unwrap_err().to_string();
        assert!(e.contains("appears more than once"), "{e}");
        // Unknown ones may repeat.
        let b = image(&h, &[encode(7, b"a"), encode(7, b"b")]);
        assert_eq!(Extensions::parse(&b, &h).unwrap().unknown, vec![7, 7]);
    }

    #[test]
    fn bitmaps_limits() {
        let h = hdr();
        let p = |e: Vec<u8>| Extensions::parse(&image(&h, &[e]), &h).map_err(|e| e.to_string());
        assert!(p(bitmaps(65535, 0, 64, 0x50000)).is_ok());
        assert!(p(bitmaps(65536, 0, 64, 0x50000)).unwrap_err().contains(
            "bitmaps_ext: Image has 65536 bitmaps, exceeding the QEMU supported maximum of 65535"
        ));
        assert!(p(bitmaps(0, 0, 64, 0x50000))
            .unwrap_err()
            .contains("found bitmaps extension with zero bitmaps"));
        assert!(p(bitmaps(1, 1, 64, 0x50000))
            .unwrap_err()
            .contains("Reserved field is not zero"));
        assert!(p(bitmaps(1, 0, 64, 0x50200))
            .unwrap_err()
            .contains("invalid bitmap directory offset"));
        assert!(p(bitmaps(1, 0, MAX_BITMAP_DIRECTORY_SIZE, 0x50000)).is_ok());
        assert!(p(bitmaps(1, 0, MAX_BITMAP_DIRECTORY_SIZE + 1, 0x50000))
            .unwrap_err()
            .contains("exceeds the maximum supported size"));
        assert!(p(encode(EXT_BITMAPS, &[0u8; 16]))
            .unwrap_err()
            .contains("bitmaps_ext: Invalid extension length"));
        // Without the autoclear bit the extension is ignored.
        let mut h2 = hdr();
        h2.autoclear_features = 0;
        let e = Extensions::parse(&image(&h2, &[bitmaps(0, 5, 0, 3)]), &h2).unwrap();
        assert!(e.bitmaps_inconsistent);
        assert_eq!(e.bitmaps, None);
    }

    #[test]
    fn crypto_extension_rules() {
        let mut h = hdr();
        let mut d = 0x10000u64.to_be_bytes().to_vec();
        d.extend_from_slice(&4096u64.to_be_bytes());
        let b = image(&h, &[encode(EXT_CRYPTO, &d)]);
        assert!(Extensions::parse(&b, &h)
            .unwrap_err()
            .to_string()
            .contains("CRYPTO header extension only expected with LUKS encryption method"));
        h.crypt_method = 2;
        assert_eq!(
            Extensions::parse(&b, &h).unwrap().crypto,
            Some(CryptoExt {
                offset: 0x10000,
                length: 4096
            })
        );
        let b = image(&h, &[encode(EXT_CRYPTO, &d[..8])]);
        assert!(Extensions::parse(&b, &h)
            .unwrap_err()
            .to_string()
            .contains("CRYPTO header extension size 8, but expected size 16"));
    }

    #[test]
    fn unsupported_feature_message_uses_names() {
        let h = hdr();
        let mut t = feature_entry(0, 5, "frobnicated");
        t.extend(feature_entry(1, 6, "compat-six"));
        let e = Extensions::parse(&image(&h, &[encode(EXT_FEATURE_TABLE, &t)]), &h).unwrap();
        assert_eq!(
            e.unsupported_features_message(1 << 5),
            "Unsupported qcow2 feature(s): frobnicated"
        );
        assert_eq!(
            e.unsupported_features_message((1 << 5) | (1 << 6)),
            "Unsupported qcow2 feature(s): frobnicated, Unknown incompatible feature: 40"
        );
        assert_eq!(
            Extensions::default().unsupported_features_message(1 << 40),
            "Unsupported qcow2 feature(s): Unknown incompatible feature: 10000000000"
        );
    }
}
