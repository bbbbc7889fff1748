//! JSON exactly as QEMU prints QAPI objects (`qobject_to_json_pretty`).
//!
//! QEMU builds a `QDict` (a hash table of 512 buckets, each bucket a list
//! with the newest entry first) and prints it bucket by bucket. The member
//! order is therefore fixed by the keys' hashes, not by the schema: members
//! are sorted by bucket ascending and, within one bucket, newest first.
//! [`QDict`] records insertion order (callers insert in QAPI schema order)
//! and reproduces that order when printed.

/// A JSON value as QEMU's QObject model holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum QValue {
    /// An unsigned integer (QAPI `uint64`/`size`).
    UInt(u64),
    /// true / false.
    Bool(bool),
    /// A string.
    Str(String),
    /// A list.
    List(Vec<QValue>),
    /// A dictionary.
    Dict(QDict),
}

/// A dictionary that prints its members in QEMU's hash order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QDict {
    entries: Vec<(String, QValue)>,
}

/// Number of buckets of QEMU's QDict.
const QDICT_BUCKETS: u32 = 512;

/// QEMU's QDict hash of `key` (the tdb hash), before reduction to a bucket.
pub fn qdict_hash(key: &str) -> u32 {
    let bytes = key.as_bytes();
    let mut value: u32 = 0x238F_13AFu32.wrapping_mul(bytes.len() as u32);
    for (i, b) in bytes.iter().enumerate() {
        value = value.wrapping_add((*b as u32) << ((i * 5) % 24));
    }
    1_103_515_243u32.wrapping_mul(value).wrapping_add(12345)
}

/// The QDict bucket of `key`.
pub fn qdict_bucket(key: &str) -> u32 {
    qdict_hash(key) % QDICT_BUCKETS
}

impl QDict {
    /// An empty dictionary.
    pub fn new() -> Self {
        QDict::default()
    }

    /// Adds a member; callers add members in QAPI schema order. A key added
    /// twice replaces the earlier value in place, as `qdict_put` does.
    pub fn put(&mut self, key: &str, value: QValue) {
        if let Some(e) = self.entries.iter_mut().find(|(k, _)| k == key) {
            e.1 = value;
        } else {
            self.entries.push((key.to_string(), value));
        }
    }

    /// Adds a string member.
    pub fn put_str(&mut self, key: &str, value: impl Into<String>) {
        self.put(key, QValue::Str(value.into()));
    }

    /// Adds an unsigned integer member.
    pub fn put_uint(&mut self, key: &str, value: u64) {
        self.put(key, QValue::UInt(value));
    }

    /// Adds a boolean member.
    pub fn put_bool(&mut self, key: &str, value: bool) {
        self.put(key, QValue::Bool(value));
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&QValue> {
        self.entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Members in the order QEMU prints them: bucket ascending, newest first
    /// within a bucket.
    pub fn ordered(&self) -> Vec<(&str, &QValue)> {
        let mut v: Vec<(u32, usize, &str, &QValue)> = self
            .entries
            .iter()
            .enumerate()
            .map(|(i, (k, val))| (qdict_bucket(k), i, k.as_str(), val))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        v.into_iter().map(|(_, _, k, val)| (k, val)).collect()
    }
}

/// Prints `value` as QEMU's pretty JSON writer does (no trailing newline).
pub fn to_json_pretty(value: &QValue) -> String {
    let mut out = String::new();
    write_value(&mut out, value, 0);
    out
}

fn indent(out: &mut String, level: usize) {
    for _ in 0..level {
        out.push_str("    ");
    }
}

fn write_value(out: &mut String, value: &QValue, level: usize) {
    match value {
        QValue::UInt(u) => out.push_str(&u.to_string()),
        QValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        QValue::Str(s) => write_str(out, s),
        QValue::List(items) => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                indent(out, level + 1);
                write_value(out, item, level + 1);
            }
            if !items.is_empty() {
                out.push('\n');
            }
            indent(out, level);
            out.push(']');
        }
        QValue::Dict(d) => {
            out.push_str("{\n");
            let members = d.ordered();
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    out.push_str(",\n");
                }
                indent(out, level + 1);
                write_str(out, k);
                out.push_str(": ");
                write_value(out, v, level + 1);
            }
            if !members.is_empty() {
                out.push('\n');
            }
            indent(out, level);
            out.push('}');
        }
    }
}

/// A JSON string as QEMU writes it: `"` `\` and control characters escaped,
/// every non-ASCII character as `\uXXXX` (upper-case hex, UTF-16 surrogate
/// pairs beyond the BMP).
fn write_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || (c as u32) >= 0x7f => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{:04X}", unit));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_the_ones_observed_in_qemu_output() {
        let expect: &[(&str, u32)] = &[
            ("backing-image", 80),
            ("compressed", 90),
            ("backing-filename-format", 206),
            ("children", 206),
            ("snapshots", 263),
            ("virtual-size", 309),
            ("filename", 313),
            ("cluster-size", 316),
            ("format", 337),
            ("actual-size", 351),
            ("format-specific", 354),
            ("full-backing-filename", 360),
            ("encrypted", 413),
            ("backing-filename", 475),
            ("dirty-flag", 501),
            ("compat", 16),
            ("compression-type", 88),
            ("lazy-refcounts", 107),
            ("bitmaps", 114),
            ("refcount-bits", 122),
            ("data-file", 182),
            ("encrypt", 339),
            ("data-file-raw", 354),
            ("corrupt", 477),
            ("extended-l2", 503),
            ("type", 425),
            ("data", 505),
            ("name", 39),
            ("info", 496),
            ("icount", 18),
            ("vm-clock-nsec", 26),
            ("date-sec", 111),
            ("date-nsec", 230),
            ("vm-clock-sec", 397),
            ("id", 486),
            ("vm-state-size", 494),
            ("flags", 20),
            ("granularity", 241),
        ];
        for (k, b) in expect {
            assert_eq!(qdict_bucket(k), *b, "bucket of {k}");
        }
    }

    #[test]
    fn same_bucket_prints_newest_first() {
        let mut d = QDict::new();
        d.put_str("backing-filename-format", "raw");
        d.put("children", QValue::List(vec![]));
        d.put_uint("virtual-size", 1);
        let order: Vec<&str> = d.ordered().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            order,
            ["children", "backing-filename-format", "virtual-size"]
        );
    }

    #[test]
    fn pretty_printer_matches_qemu_layout() {
        let mut data = QDict::new();
        data.put("type", QValue::Str("file".into()));
        data.put("data", QValue::Dict(QDict::new()));
        let mut top = QDict::new();
        top.put("children", QValue::List(vec![]));
        top.put("format-specific", QValue::Dict(data));
        top.put_bool("dirty-flag", false);
        assert_eq!(
            to_json_pretty(&QValue::Dict(top)),
            "{\n    \"children\": [\n    ],\n    \"format-specific\": {\n        \"type\": \"file\",\n        \"data\": {\n        }\n    },\n    \"dirty-flag\": false\n}"
        );
    }

    #[test]
    fn strings_escape_as_qemu() {
        let mut s = String::new();
        write_str(&mut s, "/t/\u{e9}\"\\\t\u{1}\u{1F600}");
        assert_eq!(s, "\"/t/\\u00E9\\\"\\\\\\t\\u0001\\uD83D\\uDE00\"");
    }
}
