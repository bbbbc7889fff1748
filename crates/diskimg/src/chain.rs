//! Opening an image with its backing chain.
//!
//! Invariants kept here, for every format:
//! - a backing name is resolved relative to the directory of the image that
//!   names it (absolute names stay as they are); protocol names and `json:`
//!   specifications from an image are refused, never interpreted;
//! - the backing format is the one the image records, else probed (with a
//!   warning, as QEMU's probing of a raw backing file is unsafe);
//! - a chain holds at most [`MAX_CHAIN_DEPTH`] images, and a file that is
//!   already in the chain is refused (QEMU has neither limit: it follows a
//!   looping chain until it runs out of file descriptors).

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::format::probe::{probe, Format};
use crate::format::{qcow2, raw, BlockDevice, Layer};
use crate::io::{FileStorage, OpenMode, Storage};
use crate::{Error, OpenOptions, Result};

/// The most images a chain may hold, the top included.
pub const MAX_CHAIN_DEPTH: usize = 256;

/// Opens the image at `path` with its backing chain (unless
/// `opts.open_backing` is false).
pub fn open(path: impl AsRef<Path>, opts: &OpenOptions) -> Result<Arc<dyn BlockDevice>> {
    let mut seen = HashSet::new();
    open_layer(path.as_ref(), opts.format, opts, 0, &mut seen)
}

/// Opens one layer (and, recursively, what lies beneath it).
fn open_layer(
    path: &Path,
    format: Option<Format>,
    opts: &OpenOptions,
    depth: usize,
    seen: &mut HashSet<(u64, u64)>,
) -> Result<Arc<dyn BlockDevice>> {
    let writable = opts.writable && depth == 0;
    let mode = if writable {
        OpenMode::ReadWrite
    } else {
        OpenMode::ReadOnly
    };
    let file = FileStorage::open_with(path, mode, opts.direct)?;
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::io(e, format!("Could not open '{}'", path.display())))?;
    if !seen.insert((meta.dev(), meta.ino())) {
        return Err(Error::invalid(format!(
            "Backing file chain loop: '{}' is already in the chain",
            path.display()
        )));
    }
    let storage: Arc<dyn Storage> = Arc::new(file);
    let format = match format {
        Some(f) => f,
        None => probe(storage.as_ref())?,
    };
    // Only the top image is opened for writing or for a check; backing
    // files are opened as for reading. The cache mode (O_DIRECT) applies
    // to the whole chain, as QEMU's backing children inherit it.
    let layer_opts = OpenOptions {
        writable,
        for_check: opts.for_check && depth == 0,
        ..opts.clone()
    };
    let mut layer = open_format(format, storage, path, &layer_opts)?;
    if opts.open_backing {
        if let Some(link) = layer.backing_link() {
            if depth + 1 >= MAX_CHAIN_DEPTH {
                return Err(Error::invalid(format!(
                    "Backing chain of '{}' is deeper than {MAX_CHAIN_DEPTH} images; diskimg refuses longer chains",
                    path.display()
                )));
            }
            let backing_path = resolve_backing_path(path, &link.filename)?;
            let backing_format = match &link.format {
                Some(name) => Some(name.parse::<Format>().map_err(|e| {
                    e.context(format!(
                        "Could not open backing file '{}'",
                        backing_path.display()
                    ))
                })?),
                None => None,
            };
            let backing = open_layer(&backing_path, backing_format, opts, depth + 1, seen)
                .map_err(|e| {
                    if depth == 0 {
                        e.context("Could not open backing file")
                    } else {
                        e
                    }
                })?;
            layer.set_backing(backing);
        }
    }
    Ok(layer.into_device())
}

/// Opens `storage` as `format`.
pub fn open_format(
    format: Format,
    storage: Arc<dyn Storage>,
    path: &Path,
    opts: &OpenOptions,
) -> Result<Box<dyn Layer>> {
    match format {
        Format::Raw => Ok(Box::new(raw::Raw::open(storage)?)),
        Format::Qcow2 => Ok(Box::new(qcow2::Qcow2::open(storage, path, opts)?)),
        Format::Qed | Format::AddCow => Err(Error::unsupported(format!(
            "Could not open '{}': the {} format is not implemented yet",
            path.display(),
            format
        ))),
    }
}

/// The path of a backing file named `name` by the image at `image`, as QEMU
/// combines them: relative names are relative to the image's directory.
pub fn resolve_backing_path(image: &Path, name: &str) -> Result<PathBuf> {
    if name.is_empty() {
        return Err(Error::invalid(format!(
            "Image '{}' names an empty backing file",
            image.display()
        )));
    }
    if let Some(proto) = protocol_prefix(name) {
        return Err(Error::unsupported(format!(
            "Backing file '{name}' of '{}' uses the '{proto}' protocol; diskimg opens only local files",
            image.display()
        )));
    }
    let p = Path::new(name);
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(match image.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join(p),
        _ => p.to_path_buf(),
    })
}

/// The full backing file name as `qemu-img info` prints it
/// (`full-backing-filename`): the name combined with the image's directory.
pub fn full_backing_filename(image: &str, name: &str) -> String {
    if name.starts_with('/') || protocol_prefix(name).is_some() {
        return name.to_string();
    }
    match image.rfind('/') {
        Some(i) => format!("{}{}", &image[..=i], name),
        None => name.to_string(),
    }
}

/// The protocol of a name like `nbd://host/x` or `json:{...}`, as QEMU
/// recognises one: letters, digits and `+-.` before the first `:`, with no
/// `/` before it.
fn protocol_prefix(name: &str) -> Option<&str> {
    let colon = name.find(':')?;
    let head = &name[..colon];
    if head.is_empty() || head.contains('/') {
        return None;
    }
    if head
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.' || c == '_')
    {
        Some(head)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_names_resolve_against_the_image_directory() {
        assert_eq!(
            resolve_backing_path(Path::new("d/o.qcow2"), "b.raw").unwrap(),
            PathBuf::from("d/b.raw")
        );
        assert_eq!(
            resolve_backing_path(Path::new("o.qcow2"), "b.raw").unwrap(),
            PathBuf::from("b.raw")
        );
        assert_eq!(
            resolve_backing_path(Path::new("d/o.qcow2"), "/abs/b").unwrap(),
            PathBuf::from("/abs/b")
        );
        assert!(resolve_backing_path(Path::new("o"), "json:{}").is_err());
        assert!(resolve_backing_path(Path::new("o"), "nbd://h/x").is_err());
        assert_eq!(full_backing_filename("/t/o.qcow2", "b.raw"), "/t/b.raw");
        assert_eq!(full_backing_filename("o.qcow2", "b.raw"), "b.raw");
    }
}
