//! Opening images for the commands, with qemu-img's error wording.

use std::ffi::OsStr;
use std::sync::Arc;

use diskimg::{BlockDevice, ErrorKind, Format, OpenOptions};

/// How a command opens an image.
#[derive(Debug, Clone, Copy)]
pub struct OpenHow {
    /// Open the backing chain.
    pub backing: bool,
    /// Open external data files.
    pub data_file: bool,
    /// Open every file with O_DIRECT (cache modes `none`, `directsync`).
    pub direct: bool,
}

/// Opens `path` read-only as `fmt` (probed when `None`). The error is the
/// whole message after the program prefix:
/// `Could not open 'x': Could not open 'x': No such file or directory`.
pub fn open_image(
    path: &OsStr,
    fmt: Option<&str>,
    how: OpenHow,
) -> Result<Arc<dyn BlockDevice>, String> {
    let format = parse_format(path, fmt)?;
    let warn: diskimg::WarningSink = Arc::new(crate::ctx::print_warning);
    let opts = OpenOptions {
        format,
        writable: false,
        open_backing: how.backing,
        open_data_file: how.data_file,
        direct: how.direct,
        warnings: Some(warn),
        ..OpenOptions::default()
    };
    open_with(path, &opts)
}

/// Opens `path` for writing as `fmt` (probed when `None`), with its backing
/// chain, with O_DIRECT when `direct`. When the format was probed as raw,
/// qemu's warning about it is printed first.
pub fn open_image_writable(
    path: &OsStr,
    fmt: Option<&str>,
    direct: bool,
) -> Result<Arc<dyn BlockDevice>, String> {
    let shown = path.to_string_lossy();
    let format = parse_format(path, fmt)?;
    let warn: diskimg::WarningSink = Arc::new(crate::ctx::print_warning);
    let opts = OpenOptions {
        format,
        writable: true,
        direct,
        warnings: Some(warn),
        ..OpenOptions::default()
    };
    let dev = open_with(path, &opts)?;
    if format.is_none() && dev.info().format == "raw" {
        eprintln!(
            "WARNING: Image format was not specified for '{shown}' and probing guessed raw.\n         Automatically detecting the format is dangerous for raw images, write operations on block 0 will be restricted.\n         Specify the 'raw' format explicitly to remove the restrictions."
        );
    }
    Ok(dev)
}

/// The format named by `-f`, with qemu-img's error for an unknown one.
fn parse_format(path: &OsStr, fmt: Option<&str>) -> Result<Option<Format>, String> {
    match fmt {
        Some(f) => f.parse::<Format>().map(Some).map_err(|e| {
            format!(
                "Could not open '{}': {}",
                path.to_string_lossy(),
                e.message()
            )
        }),
        None => Ok(None),
    }
}

fn open_with(path: &OsStr, opts: &OpenOptions) -> Result<Arc<dyn BlockDevice>, String> {
    let shown = path.to_string_lossy();
    if shown.is_empty() {
        // QEMU's file driver refuses an empty name before any system call.
        return Err("Could not open '': The 'file' block driver requires a file name".to_string());
    }
    diskimg::open(path, opts).map_err(|e| {
        let m = e.message();
        // qemu-img puts "Could not open 'F': " before the driver's message.
        // An OS error opening the file already carries the same words and
        // qemu-img repeats them (`Could not open 'x': Could not open 'x':
        // No such file or directory`); a format driver's message that
        // already starts with them is shown once, as qemu-img shows it.
        let prefix = format!("Could not open '{shown}': ");
        let os_error = matches!(
            e.kind(),
            ErrorKind::NotFound | ErrorKind::PermissionDenied | ErrorKind::Io
        );
        if m.starts_with(&prefix) && !os_error {
            m.to_string()
        } else {
            format!("{prefix}{m}")
        }
    })
}
