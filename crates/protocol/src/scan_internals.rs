//! Not API: the fast and the slow object scanner side by side, for
//! `tests/scan_fast_vs_slow.rs`.
//!
//! The property that keeps the fast scanner honest (it never accepts what the
//! serde_json path refuses, and reports the same members when both accept) is best
//! tested with generators that live in `tests/`, and integration tests see only public
//! items. So this module is public but hidden from the docs; nothing outside the
//! crate's own tests should use it, and it may change without notice.

use crate::error::BodyError;
use crate::scan::{scan_object, scan_object_slow, MemberSink, ObjectLayout};
use crate::validate::scan_fast;

/// Everything a scan reported, in plain owned values that compare with `==`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scanned {
    /// Whether the text returned is the whole input (it must be).
    pub text_is_input: bool,
    /// Index of the opening `{`.
    pub open: usize,
    /// Index of the closing `}`.
    pub close: usize,
    /// The cut spans, in order.
    pub cuts: Vec<(usize, usize)>,
    /// Whether the scan reported the text as all ASCII.
    pub ascii: bool,
    /// How deep the scan found containers to nest (the object is level 1).
    pub depth: usize,
    /// Every top-level member the sink saw: the key as classified (unescaped) and the
    /// byte span of the value in the input (`None` if the value was not a sub-slice of
    /// the input, which would be a bug).
    pub members: Vec<(String, Option<(usize, usize)>)>,
}

/// Scans with the fast scanner alone; `None` where it refuses the text. `cut` decides
/// which members are cut, by key.
pub fn fast(json: &[u8], cut: fn(&str) -> bool) -> Option<Scanned> {
    let mut sink = Recorder::new(json, cut);
    let mut layout = ObjectLayout::default();
    let text = scan_fast(json, &mut sink, &mut layout).ok()?;
    Some(sink.finish(json, text, &layout))
}

/// Scans with the serde_json path alone.
pub fn slow(json: &[u8], cut: fn(&str) -> bool) -> Result<Scanned, BodyError> {
    let mut sink = Recorder::new(json, cut);
    let mut layout = ObjectLayout::default();
    let text = scan_object_slow(json, &mut sink, &mut layout)?;
    Ok(sink.finish(json, text, &layout))
}

/// Scans as the crate does: fast, and slow where the fast scanner refuses.
pub fn combined(json: &[u8], cut: fn(&str) -> bool) -> Result<Scanned, BodyError> {
    let mut sink = Recorder::new(json, cut);
    let mut layout = ObjectLayout::default();
    let text = scan_object(json, &mut sink, &mut layout)?;
    Ok(sink.finish(json, text, &layout))
}

/// Records every member, cutting those `cut` picks.
struct Recorder {
    /// Where the input starts, to turn values into offsets.
    base: usize,
    /// The input's length.
    len: usize,
    /// Which keys to cut.
    cut: fn(&str) -> bool,
    /// The members seen so far.
    members: Vec<(String, Option<(usize, usize)>)>,
}

impl Recorder {
    fn new(json: &[u8], cut: fn(&str) -> bool) -> Self {
        Recorder {
            base: json.as_ptr() as usize,
            len: json.len(),
            cut,
            members: Vec::new(),
        }
    }

    fn finish(self, json: &[u8], text: &str, layout: &ObjectLayout) -> Scanned {
        Scanned {
            text_is_input: text.as_bytes() == json && text.as_ptr() == json.as_ptr(),
            open: layout.open,
            close: layout.close,
            cuts: layout.cuts.iter().copied().collect(),
            ascii: layout.ascii,
            depth: layout.depth,
            members: self.members,
        }
    }
}

impl<'de> MemberSink<'de> for Recorder {
    type Key = (String, bool);

    fn key(&mut self, key: &str) -> (String, bool) {
        (key.to_owned(), (self.cut)(key))
    }

    fn value(&mut self, (key, cut): (String, bool), value: &'de str) -> bool {
        let start = (value.as_ptr() as usize).checked_sub(self.base);
        let span = start
            .map(|start| (start, start + value.len()))
            .filter(|&(_, end)| end <= self.len);
        self.members.push((key, span));
        cut
    }

    fn reset(&mut self) {
        self.members.clear();
    }
}
