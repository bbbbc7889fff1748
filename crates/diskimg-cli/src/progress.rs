//! qemu-img's progress display: `    (12.00/100%)` redrawn with a carriage
//! return on stdout. On a terminal it is drawn with indicatif; otherwise
//! lines are written as qemu-img writes them (it prints progress even when
//! stdout is a pipe), each time the percentage moves by at least one step.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A progress display; does nothing when disabled.
pub struct Progress {
    bar: Option<ProgressBar>,
    plain: bool,
    last: f64,
}

impl Progress {
    /// A display that is shown only when `enabled`.
    pub fn new(enabled: bool) -> Progress {
        if !enabled {
            return Progress {
                bar: None,
                plain: false,
                last: -1.0,
            };
        }
        if std::io::stdout().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(10_000), ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template("    ({qpct}/100%)")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key(
                    "qpct",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let _ = write!(w, "{:.2}", state.fraction() as f64 * 100.0);
                    },
                );
            bar.set_style(style);
            Progress {
                bar: Some(bar),
                plain: false,
                last: -1.0,
            }
        } else {
            Progress {
                bar: None,
                plain: true,
                last: -1.0,
            }
        }
    }

    /// Shows `fraction` (0..=1) done.
    pub fn set(&mut self, fraction: f64) {
        let pct = (fraction * 100.0).clamp(0.0, 100.0);
        if let Some(bar) = &self.bar {
            bar.set_position((pct * 100.0) as u64);
        } else if self.plain
            && (pct - self.last >= 1.0 || (pct >= 100.0 && self.last < 100.0) || self.last < 0.0)
        {
            self.last = pct;
            let mut out = std::io::stdout().lock();
            let _ = write!(out, "    ({pct:.2}/100%)\r");
            let _ = out.flush();
        }
    }

    /// Ends the display with a newline, as qemu-img does.
    pub fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
            println!();
        } else if self.plain {
            self.plain = false;
            println!();
        }
    }
}
