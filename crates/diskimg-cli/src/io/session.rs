//! The state of a qemu-io run: the open image and how it was opened, and
//! the commands that change it (`open`, `close`, `reopen`, `quit`).

use std::ffi::OsStr;
use std::sync::Arc;

use diskimg::{BlockDevice, CacheMode, Error, ErrorKind};

use super::getopt::{getopt, Item};
use super::table::{usage_line, CmdResult, Failed};
use crate::open::{open_image, open_image_writable, OpenHow};

/// How an image is opened (qemu-io's BDRV_O_* flags that diskimg honours).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFlags {
    /// Open read-only (`-r`).
    pub read_only: bool,
    /// Flush after every write (qemu-io's default; `-n` and `-t` with a
    /// write-back mode turn it off).
    pub writethrough: bool,
    /// Open with O_DIRECT (`-n`, `-t none|directsync`, `cache.direct=on`).
    pub direct: bool,
    /// Pass discards to the image (`-d unmap`, qemu-io's default).
    pub unmap: bool,
    /// Use a temporary overlay (`-s`): not implemented.
    pub snapshot: bool,
    /// Copy backing data into the image on reads (`-C`): not implemented.
    pub copy_on_read: bool,
}

impl Default for OpenFlags {
    fn default() -> Self {
        OpenFlags {
            read_only: false,
            writethrough: true,
            direct: false,
            unmap: true,
            snapshot: false,
            copy_on_read: false,
        }
    }
}

impl OpenFlags {
    /// Applies a cache mode (`-t`); false for an unknown one. The mode
    /// decides O_DIRECT (the open's) and whether each write is flushed
    /// (the session's, as qemu-io's block layer does it).
    pub fn set_cache(&mut self, mode: &str) -> bool {
        let Ok(mode) = mode.parse::<CacheMode>() else {
            return false;
        };
        self.writethrough = mode.writethrough();
        self.direct = mode.direct();
        true
    }

    /// `-n` / `--nocache`: qemu-io's short for `-t none`.
    pub fn set_nocache(&mut self) {
        self.writethrough = false;
        self.direct = true;
    }

    /// Applies a discard mode (`-d`); false for an unknown one.
    pub fn set_discard(&mut self, mode: &str) -> bool {
        self.unmap = match mode {
            "off" | "ignore" => false,
            "on" | "unmap" => true,
            _ => return false,
        };
        true
    }
}

/// Checks an AIO mode name (`-i`); diskimg's I/O does not depend on it.
pub fn valid_aio(mode: &str) -> bool {
    matches!(mode, "threads" | "native" | "io_uring")
}

/// What to open: `driver=`, `file=` and the other open options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenSpec {
    /// The file name.
    pub file: Option<String>,
    /// The format (`-f`, `driver=`).
    pub driver: Option<String>,
}

impl OpenSpec {
    /// Adds the options of a QemuOpts string (`a=b,c=d`, `,,` for a comma).
    /// With `implied_file`, a first element without `=` is the file name
    /// (as `--image-opts` reads it). Options diskimg does not know are
    /// refused with a message naming them.
    pub fn add_options(
        &mut self,
        s: &str,
        implied_file: bool,
        flags: &mut OpenFlags,
    ) -> Result<(), String> {
        for (i, item) in split_opts(s).into_iter().enumerate() {
            let (key, value) = match item.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None if i == 0 && implied_file => ("file".to_string(), item.clone()),
                None => (item.clone(), "on".to_string()),
            };
            match key.as_str() {
                "driver" => self.driver = Some(value),
                "file" | "file.filename" => self.file = Some(value),
                "file.driver" if value == "file" => {}
                "read-only" => flags.read_only = on_off(&key, &value)?,
                "force-share" | "auto-read-only" => {
                    on_off(&key, &value)?;
                }
                // diskimg takes no file locks and has one I/O engine.
                "file.locking" if matches!(value.as_str(), "on" | "off" | "auto") => {}
                "file.aio" | "aio" if valid_aio(&value) => {}
                "cache.direct" => flags.direct = on_off(&key, &value)?,
                "cache.no-flush" => {
                    // No flushes at all: writes are never written through.
                    if on_off(&key, &value)? {
                        flags.writethrough = false;
                    }
                }
                "discard" => {
                    if !flags.set_discard(&value) {
                        return Err(format!("Invalid discard option: {value}"));
                    }
                }
                _ => {
                    return Err(format!(
                        "the open option '{key}={value}' is not supported by diskimg"
                    ))
                }
            }
        }
        Ok(())
    }
}

fn on_off(key: &str, v: &str) -> Result<bool, String> {
    match v {
        "on" | "yes" | "true" => Ok(true),
        "off" | "no" | "false" => Ok(false),
        _ => Err(format!("Parameter '{key}' expects 'on' or 'off'")),
    }
}

/// Splits a QemuOpts string at single commas; `,,` stands for a comma.
fn split_opts(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == ',' {
            if chars.peek() == Some(&',') {
                chars.next();
                cur.push(',');
            } else {
                out.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    out.push(cur);
    out.retain(|x| !x.is_empty());
    out
}

/// An open image.
pub struct Image {
    /// The device, with its backing chain.
    pub dev: Arc<dyn BlockDevice>,
    /// How it was opened.
    pub flags: OpenFlags,
    /// What was opened (for `reopen`).
    pub spec: OpenSpec,
    /// The format was probed and found raw: writes may not turn the first
    /// sector into another format's header (QEMU's rule for probed raw).
    pub probed_raw: bool,
}

impl Image {
    /// Whether the image accepts writes.
    pub fn writable(&self) -> bool {
        !self.flags.read_only
    }
}

/// A qemu-io session.
pub struct Session {
    /// The prefix of error messages: "qemu-io" or "diskimg".
    pub prog: &'static str,
    /// The open image.
    pub image: Option<Image>,
    /// `--image-opts` was given: `open` reads its argument as options.
    pub image_opts: bool,
    /// `quit` was run.
    pub quit: bool,
}

impl Session {
    /// Prints `<prog>: msg` on stderr (QEMU's error_report).
    pub fn error(&self, msg: impl std::fmt::Display) {
        eprintln!("{}: {}", self.prog, msg);
    }

    /// The open image; the dispatcher has checked there is one.
    pub fn image(&self) -> Result<&Image, Failed> {
        self.image.as_ref().ok_or(Failed)
    }

    /// Opens an image (qemu-io's `openfile`). `name` is the file operand;
    /// the spec's options may name the file instead.
    pub fn open(&mut self, name: Option<&str>, mut spec: OpenSpec, flags: OpenFlags) -> CmdResult {
        if self.image.is_some() {
            self.error("file open already, try 'help close'");
            return Err(Failed);
        }
        if let Some(n) = name {
            spec.file = Some(n.to_string());
        }
        let prefix = match name {
            Some(n) => format!("can't open device {n}: "),
            None => "can't open: ".to_string(),
        };
        let Some(file) = spec.file.clone() else {
            self.error(format!("{prefix}Must specify either driver or file"));
            return Err(Failed);
        };
        if flags.snapshot {
            self.error(format!(
                "{prefix}snapshot mode (-s) is not supported by diskimg"
            ));
            return Err(Failed);
        }
        if flags.copy_on_read {
            self.error(format!(
                "{prefix}copy-on-read (-C) is not supported by diskimg"
            ));
            return Err(Failed);
        }
        let path = OsStr::new(&file);
        let fmt = spec.driver.as_deref();
        // A writable open of a probed raw image prints qemu's warning.
        let opened = if flags.read_only {
            let how = OpenHow {
                backing: true,
                data_file: true,
                direct: flags.direct,
            };
            open_image(path, fmt, how)
        } else {
            open_image_writable(path, fmt, flags.direct)
        };
        match opened {
            Ok(dev) => {
                let probed_raw = spec.driver.is_none() && dev.info().format == "raw";
                self.image = Some(Image {
                    dev,
                    flags,
                    spec,
                    probed_raw,
                });
                Ok(())
            }
            Err(m) => {
                // qemu-img puts "Could not open 'F': " before the block
                // layer's message; qemu-io puts "can't open device F: "
                // there instead.
                let outer = format!("Could not open '{file}': ");
                let m = m.strip_prefix(&outer).unwrap_or(&m);
                self.error(format!("{prefix}{m}"));
                Err(Failed)
            }
        }
    }

    /// Closes the image, flushing what was written (as QEMU does on close).
    pub fn close(&mut self) -> CmdResult {
        if let Some(img) = self.image.take() {
            if img.writable() {
                if let Err(e) = img.dev.flush() {
                    self.error(e.message());
                    return Err(Failed);
                }
            }
        }
        Ok(())
    }
}

/// The errno text QEMU would print for a library error (`read failed:
/// Input/output error`).
pub fn errno_text(e: &Error) -> String {
    if let Some(io) = std::error::Error::source(e).and_then(|s| s.downcast_ref::<std::io::Error>())
    {
        if io.raw_os_error().is_some() {
            return diskimg::error::os_message(io);
        }
    }
    match e.kind() {
        ErrorKind::NotFound => "No such file or directory",
        ErrorKind::PermissionDenied => "Permission denied",
        ErrorKind::Unsupported => "Operation not supported",
        ErrorKind::InvalidArgument => "Invalid argument",
        ErrorKind::ReadOnly => "Operation not permitted",
        ErrorKind::InvalidImage | ErrorKind::Io => "Input/output error",
    }
    .to_string()
}

/// `open [-rsCnkU] [-t cache] [-d discard] [-o options] [path]`
pub fn open_f(s: &mut Session, argv: &[String]) -> CmdResult {
    let p = getopt(&argv[0], &argv[1..], "snCro:ki:t:d:U", &[]);
    let mut flags = OpenFlags::default();
    let mut spec = OpenSpec::default();
    for it in &p.items {
        match it {
            Item::Opt('s', _) => flags.snapshot = true,
            Item::Opt('n', _) => flags.set_nocache(),
            Item::Opt('C', _) => flags.copy_on_read = true,
            Item::Opt('r', _) => flags.read_only = true,
            Item::Opt('k', _) | Item::Opt('U', _) => {}
            Item::Opt('t', Some(m)) => {
                if !flags.set_cache(m) {
                    s.error(format!("Invalid cache option: {m}"));
                    return Err(Failed);
                }
            }
            Item::Opt('d', Some(m)) => {
                if !flags.set_discard(m) {
                    s.error(format!("Invalid discard option: {m}"));
                    return Err(Failed);
                }
            }
            Item::Opt('i', Some(m)) => {
                if !valid_aio(m) {
                    s.error(format!("Invalid aio option: {m}"));
                    return Err(Failed);
                }
            }
            Item::Opt('o', Some(o)) => {
                if s.image_opts {
                    outln!("--image-opts and 'open -o' are mutually exclusive");
                    return Err(Failed);
                }
                if let Err(m) = spec.add_options(o, false, &mut flags) {
                    s.error(m);
                    return Err(Failed);
                }
            }
            Item::Bad(m) => {
                eprintln!("{m}");
                out!("{}", usage_line("open"));
                return Err(Failed);
            }
            Item::Opt(..) => {}
        }
    }
    let mut ops = p.operands.as_slice();
    if s.image_opts && ops.len() == 1 {
        if let Err(m) = spec.add_options(&ops[0], true, &mut flags) {
            s.error(m);
            return Err(Failed);
        }
        ops = &[];
    }
    match ops {
        [name] => s.open(Some(name), spec, flags),
        [] => s.open(None, spec, flags),
        _ => {
            out!("{}", usage_line("open"));
            Err(Failed)
        }
    }
}

/// `close`
pub fn close_f(s: &mut Session, _argv: &[String]) -> CmdResult {
    s.close()
}

/// `quit`: stops reading commands (the remaining `-c` commands too).
pub fn quit_f(s: &mut Session, _argv: &[String]) -> CmdResult {
    s.quit = true;
    Ok(())
}

/// `reopen [(-r|-w)] [-c cache] [-o options]`: diskimg reopens the image
/// with the new mode; block driver options cannot be changed.
pub fn reopen_f(s: &mut Session, argv: &[String]) -> CmdResult {
    let p = getopt(&argv[0], &argv[1..], "c:o:rw", &[]);
    let Some(img) = s.image.as_ref() else {
        return Err(Failed);
    };
    let mut flags = img.flags;
    let mut rw_given = false;
    for it in &p.items {
        match it {
            Item::Opt('c', Some(m)) => {
                if !flags.set_cache(m) {
                    s.error(format!("Invalid cache option: {m}"));
                    return Err(Failed);
                }
            }
            Item::Opt('o', Some(o)) => {
                let key = o.split(['=', ',']).next().unwrap_or(o);
                s.error(format!("Cannot change the option '{key}'"));
                return Err(Failed);
            }
            Item::Opt(c @ ('r' | 'w'), _) => {
                if rw_given {
                    s.error("Only one -r/-w option may be given");
                    return Err(Failed);
                }
                rw_given = true;
                flags.read_only = *c == 'r';
            }
            Item::Bad(m) => {
                eprintln!("{m}");
                out!("{}", usage_line("reopen"));
                return Err(Failed);
            }
            Item::Opt(..) => {}
        }
    }
    if !p.operands.is_empty() {
        out!("{}", usage_line("reopen"));
        return Err(Failed);
    }
    // Only a change of access or of O_DIRECT needs the files opened again.
    if flags.read_only == img.flags.read_only && flags.direct == img.flags.direct {
        if let Some(img) = s.image.as_mut() {
            img.flags = flags;
        }
        return Ok(());
    }
    let spec = img.spec.clone();
    let old_flags = img.flags;
    s.close()?;
    let file = spec.file.clone();
    if s.open(file.as_deref(), spec.clone(), flags).is_err() {
        // Keep the image open as it was, as a failed reopen does in QEMU.
        let _ = s.open(file.as_deref(), spec, old_flags);
        return Err(Failed);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_strings() {
        assert_eq!(split_opts("a=b,,c,d=e"), vec!["a=b,c", "d=e"]);
        let mut spec = OpenSpec::default();
        let mut flags = OpenFlags::default();
        spec.add_options(
            "x.img,driver=raw,read-only=on,file.locking=off",
            true,
            &mut flags,
        )
        .unwrap();
        assert_eq!(spec.file.as_deref(), Some("x.img"));
        assert_eq!(spec.driver.as_deref(), Some("raw"));
        assert!(flags.read_only);
        assert!(spec.add_options("node-name=x", false, &mut flags).is_err());
    }

    #[test]
    fn cache_modes() {
        let mut f = OpenFlags::default();
        assert!(f.writethrough && !f.direct);
        assert!(f.set_cache("writeback"));
        assert!(!f.writethrough && !f.direct);
        assert!(f.set_cache("none"));
        assert!(!f.writethrough && f.direct);
        assert!(f.set_cache("directsync"));
        assert!(f.writethrough && f.direct);
        assert!(f.set_cache("off"));
        assert!(!f.writethrough && f.direct);
        assert!(f.set_cache("unsafe"));
        assert!(!f.writethrough && !f.direct);
        assert!(!f.set_cache("bogus"));
        let mut f = OpenFlags::default();
        f.set_nocache();
        assert!(!f.writethrough && f.direct);
    }
}
