//! The progress bars of the long data jobs (synth, table split, conversion): one style, hidden when off.
use indicatif::{ProgressBar, ProgressStyle};

/// A bar of `len` steps drawn with `template` (indicatif's syntax; `[{bar:40}]` draws with `=> `), or a
/// hidden bar when `enabled` is false so callers update it unconditionally.
pub(crate) fn progress_bar(enabled: bool, len: u64, template: &str) -> ProgressBar {
    if !enabled {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}
