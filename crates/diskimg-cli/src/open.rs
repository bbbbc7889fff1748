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
}

/// Opens `path` read-only as `fmt` (probed when `None`). The error is the
/// whole message after the program prefix:
/// `Could not open 'x': Could not open 'x': No such file or directory`.
pub fn open_image(
    path: &OsStr,
    fmt: Option<&str>,
    how: OpenHow,
) -> Result<Arc<dyn BlockDevice>, String> {
    open_image_rw(path, fmt, how, false)
}

/// Opens `path` as [`open_image`] does, for writing when `writable` (the
/// backing chain stays read-only).
pub fn open_image_rw(
    path: &OsStr,
    fmt: Option<&str>,
    how: OpenHow,
    writable: bool,
) -> Result<Arc<dyn BlockDevice>, String> {
    let shown = path.to_string_lossy();
    if shown.is_empty() {
        // QEMU's file driver refuses an empty name before any system call.
        return Err("Could not open '': The 'file' block driver requires a file name".to_string());
    }
    let format = match fmt {
        Some(f) => Some(
            f.parse::<Format>()
                .map_err(|e| format!("Could not open '{shown}': {}", e.message()))?,
        ),
        None => None,
    };
    let warn: diskimg::WarningSink = Arc::new(crate::ctx::print_warning);
    let opts = OpenOptions {
        format,
        writable,
        open_backing: how.backing,
        open_data_file: how.data_file,
        warnings: Some(warn),
        ..OpenOptions::default()
    };
    diskimg::open(path, &opts).map_err(|e| {
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
