//! Opening images for the commands, with qemu-img's error wording.

use std::ffi::OsStr;
use std::sync::Arc;

use diskimg::{BlockDevice, Format, OpenOptions};

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
    let shown = path.to_string_lossy();
    let format = match fmt {
        Some(f) => Some(
            f.parse::<Format>()
                .map_err(|e| format!("Could not open '{shown}': {}", e.message()))?,
        ),
        None => None,
    };
    let warn: diskimg::WarningSink = Arc::new(|msg: &str| eprintln!("{msg}"));
    let opts = OpenOptions {
        format,
        writable: false,
        open_backing: how.backing,
        open_data_file: how.data_file,
        warnings: Some(warn),
        ..OpenOptions::default()
    };
    diskimg::open(path, &opts).map_err(|e| {
        let m = e.message();
        // The library already names the file in its open errors; qemu-img
        // puts its own "Could not open" in front of the driver's message.
        format!("Could not open '{shown}': {m}")
    })
}
