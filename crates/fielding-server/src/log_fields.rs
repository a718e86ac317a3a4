//! [`LeanFields`]: how the server's log subscriber writes span and event
//! fields. The text is exactly that of `tracing-subscriber`'s
//! [`DefaultFields`] (`name=value`, separated by spaces, strings quoted),
//! written for less.
//!
//! Why it matters: the `fmt` subscriber formats every field of every span
//! it takes into a string when the span opens and again on each `record`,
//! whether or not a line is ever logged inside it. With `INFO` on, that is
//! the `request` and `command` spans of every API request, and
//! `DefaultFields` spends most of that work on the way rather than on the
//! values: each field name goes through `nu_ansi_term`'s styling (a no-op
//! style when colours are off, still formatted), each piece through
//! `core::fmt` and a `dyn Write` into a string that grows by doubling.
//! [`LeanFields`] appends names, numbers and plain strings directly to one
//! per-thread buffer and hands the result to the span's string in one
//! write. Whatever it does not handle the same way cheaply (a `message`,
//! an error with its sources, colours on a terminal) it leaves to
//! [`DefaultFields`] itself, so the output cannot drift from it.
//! [`SpanFieldsRoom`] gives a span's string room for the fields recorded
//! after it opens, so that it is not moved on each `record`.

use std::cell::RefCell;
use std::fmt::{self, Write as _};

use tracing::field::{Field, Visit};
use tracing::{span, Subscriber};
use tracing_subscriber::field::{RecordFields, VisitOutput};
use tracing_subscriber::fmt::format::{DefaultFields, DefaultVisitor, Writer};
use tracing_subscriber::fmt::{FormatFields, FormattedFields};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::registry::LookupSpan;

/// The server's [`FormatFields`]: [`DefaultFields`]' text, cheaper to make
/// (see the [module docs](self)).
///
/// ```
/// use fielding_server::log_fields::{LeanFields, SpanFieldsRoom};
/// use tracing_subscriber::layer::SubscriberExt as _;
/// let subscriber = tracing_subscriber::registry()
///     .with(SpanFieldsRoom)
///     .with(tracing_subscriber::fmt::layer().with_ansi(false).fmt_fields(LeanFields));
/// # drop(subscriber);
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct LeanFields;

/// The scratch buffer's capacity kept between spans.
const SCRATCH_KEEP_BYTES: usize = 4096;

thread_local! {
    /// Where a span's fields are put together before they go to the
    /// span's own string in one write; kept between spans so that its
    /// capacity is allocated once per thread.
    static SCRATCH: RefCell<String> = const { RefCell::new(String::new()) };
}

impl<'writer> FormatFields<'writer> for LeanFields {
    fn format_fields<R: RecordFields>(&self, writer: Writer<'writer>, fields: R) -> fmt::Result {
        // Colours are for a terminal, where the volume is a person's
        // reading speed: the default formatter's styling is not worth
        // copying.
        if writer.has_ansi_escapes() {
            return DefaultFields::new().format_fields(writer, fields);
        }
        let format = |buf: &mut String| {
            let mut visitor = LeanVisitor {
                buf,
                writer,
                is_empty: true,
                result: Ok(()),
            };
            fields.record(&mut visitor);
            visitor.finish()
        };
        SCRATCH.with(|scratch| match scratch.try_borrow_mut() {
            Ok(mut buf) => {
                buf.clear();
                // One huge field must not keep its memory on this thread
                // for good.
                if buf.capacity() > SCRATCH_KEEP_BYTES {
                    buf.shrink_to(SCRATCH_KEEP_BYTES);
                }
                format(&mut buf)
            }
            // A field's `Debug` that logs (so formats fields) while this
            // thread is already formatting: a buffer of its own.
            Err(_) => format(&mut String::new()),
        })
    }
}

/// Writes `name=value` pairs into `buf`, and through `writer` when done
/// or when a field is left to [`DefaultVisitor`].
struct LeanVisitor<'b, 'w> {
    buf: &'b mut String,
    writer: Writer<'w>,
    /// Whether nothing was written yet (no leading space).
    is_empty: bool,
    result: fmt::Result,
}

impl LeanVisitor<'_, '_> {
    /// Starts a `name=` pair for `field` and returns `false` when it is
    /// not to be written: after an error, or for the `log.` metadata
    /// fields of records bridged from the `log` crate, which the line
    /// already shows (as [`DefaultVisitor`] skips them when
    /// tracing-subscriber's `tracing-log` feature is on, as it is in this
    /// crate through its default features).
    fn begin(&mut self, field: &Field) -> bool {
        if self.result.is_err() {
            return false;
        }
        let name = field.name();
        if name.starts_with("log.") {
            return false;
        }
        if !self.is_empty {
            self.buf.push(' ');
        }
        self.is_empty = false;
        self.buf.push_str(name.strip_prefix("r#").unwrap_or(name));
        self.buf.push('=');
        true
    }

    /// Hands one field to [`DefaultVisitor`] on the real writer, after what
    /// is buffered so far: for what it escapes or lays out in ways not
    /// worth copying (the `message`, errors).
    fn delegate(&mut self, field: &Field, record: impl FnOnce(&mut DefaultVisitor<'_>)) {
        if self.result.is_err() || field.name().starts_with("log.") {
            return;
        }
        self.flush();
        if self.result.is_err() {
            return;
        }
        let mut visitor = DefaultVisitor::new(self.writer.by_ref(), self.is_empty);
        record(&mut visitor);
        self.result = visitor.finish();
        self.is_empty = false;
    }

    fn flush(&mut self) {
        if !self.buf.is_empty() {
            self.result = self.writer.write_str(self.buf);
            self.buf.clear();
        }
    }

    fn push_u64(&mut self, value: u64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut rest = value;
        loop {
            at -= 1;
            // `rest % 10` is below 10: the cast cannot truncate.
            digits[at] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        for &digit in &digits[at..] {
            self.buf.push(char::from(digit));
        }
    }
}

/// Whether `{:?}` of `value` is `value` between double quotes: printable
/// ASCII with nothing `str`'s `Debug` escapes.
fn quotes_verbatim(value: &str) -> bool {
    value
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
}

impl Visit for LeanVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            return self.delegate(field, |v| v.record_str(field, value));
        }
        if !self.begin(field) {
            return;
        }
        if quotes_verbatim(value) {
            self.buf.push('"');
            self.buf.push_str(value);
            self.buf.push('"');
        } else {
            self.result = write!(self.buf, "{value:?}");
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if field.name() == "message" {
            return self.delegate(field, |v| v.record_u64(field, value));
        }
        if self.begin(field) {
            self.push_u64(value);
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if field.name() == "message" {
            return self.delegate(field, |v| v.record_i64(field, value));
        }
        if self.begin(field) {
            if value < 0 {
                self.buf.push('-');
            }
            self.push_u64(value.unsigned_abs());
        }
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        if field.name() == "message" {
            return self.delegate(field, |v| v.record_bool(field, value));
        }
        if self.begin(field) {
            self.buf.push_str(if value { "true" } else { "false" });
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.delegate(field, |v| v.record_error(field, value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            return self.delegate(field, |v| v.record_debug(field, value));
        }
        if self.begin(field) {
            self.result = write!(self.buf, "{value:?}");
        }
    }
}

impl VisitOutput<fmt::Result> for LeanVisitor<'_, '_> {
    fn finish(mut self) -> fmt::Result {
        if self.result.is_ok() {
            self.flush();
        }
        self.result
    }
}

/// Room made for a span's fields when it opens: enough for the `request`
/// and `command` spans with the fields recorded on them later, so that
/// their string is allocated once rather than grown on each `record`.
const SPAN_FIELDS_CAPACITY: usize = 384;

/// A layer for just under the `fmt` layer that writes a new span's fields
/// (with [`LeanFields`], as the `fmt` layer would) into a string sized for
/// the fields recorded later too (384 bytes); the `fmt`
/// layer finds them there and appends what is recorded. Left out with
/// colours on, whose styling the `fmt` layer notes on the fields it makes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpanFieldsRoom;

impl<S> Layer<S> for SpanFieldsRoom
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else {
            return;
        };
        let mut extensions = span.extensions_mut();
        if extensions.get_mut::<FormattedFields<LeanFields>>().is_some() {
            return;
        }
        let mut fields = FormattedFields::<LeanFields>::new(String::with_capacity(SPAN_FIELDS_CAPACITY));
        // On failure the `fmt` layer formats them itself (and says so).
        if LeanFields.format_fields(fields.as_writer(), attrs).is_ok() {
            extensions.insert(fields);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use tracing::Instrument as _;
    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Every line the subscriber writes.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Lines {
        type Writer = Lines;
        fn make_writer(&'a self) -> Lines {
            self.clone()
        }
    }

    #[derive(Debug)]
    struct Failure(Option<Box<Failure>>);

    impl fmt::Display for Failure {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(if self.0.is_some() {
                "outer \"failure\""
            } else {
                "inner\nfailure"
            })
        }
    }

    impl std::error::Error for Failure {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.0.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
        }
    }

    /// Spans and events with every kind of field, recorded in pieces.
    fn emit() {
        let span = tracing::info_span!(
            "request",
            method = %"PUT",
            path = %"/v1/demand/accounts/101/runs/01K",
            plain = "ascii only",
            quoted = "say \"hi\"\\ there",
            unicode = "caf\u{e9} \u{301} \u{1b}[31m tab\t",
            r#type = "raw",
            count = 7u64,
            negative = -42i64,
            min = i64::MIN,
            max = u64::MAX,
            flag = true,
            float = 1.5f64,
            big = 1u128 << 100,
            debug = ?Some("x"),
            status = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        span.record("status", 202u16);
        span.record("outcome", "ok");
        let inner = tracing::info_span!(parent: &span, "command", attempt = tracing::field::Empty);
        inner.record("attempt", 1u32);
        async {
            tracing::info!(error_id = 3u64, "request failed: \u{1b}[2J \"quoted\"");
            let error = Failure(Some(Box::new(Failure(None))));
            tracing::warn!(error = &error as &(dyn std::error::Error + 'static), "with sources");
            tracing::info!(message = 5u64, other = "after");
            tracing::info!(empty = "", "");
        }
        .instrument(inner)
        .instrument(span)
        .now_or_never();
        let fresh = tracing::info_span!("late", first = tracing::field::Empty, second = tracing::field::Empty);
        fresh.record("second", "b");
        fresh.record("first", 1u64);
        fresh.in_scope(|| tracing::info!("in a span recorded out of order"));
    }

    trait NowOrNever: std::future::Future<Output = ()> + Sized {
        fn now_or_never(self) {
            let mut future = std::pin::pin!(self);
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            assert!(future.as_mut().poll(&mut cx).is_ready());
        }
    }

    impl<F: std::future::Future<Output = ()>> NowOrNever for F {}

    fn lines(lean: bool) -> String {
        use tracing_subscriber::layer::SubscriberExt as _;
        let out = Lines::default();
        // A macro: each subscriber needs a layer typed for it.
        macro_rules! layer {
            () => {
                tracing_subscriber::fmt::layer()
                    .without_time()
                    .with_ansi(false)
                    .with_writer(out.clone())
            };
        }
        if lean {
            let subscriber = tracing_subscriber::registry()
                .with(SpanFieldsRoom)
                .with(layer!().fmt_fields(LeanFields));
            tracing::subscriber::with_default(subscriber, emit);
        } else {
            let subscriber = tracing_subscriber::registry().with(layer!());
            tracing::subscriber::with_default(subscriber, emit);
        }
        let bytes = out.0.lock().map(|b| b.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    #[test]
    fn the_text_is_the_default_formatters() {
        let lean = lines(true);
        let default = lines(false);
        assert!(lean.contains(r#"method=PUT"#), "{lean}");
        assert!(lean.contains(r#"status=202 outcome="ok""#), "{lean}");
        assert!(lean.contains("late{first=1 second=\"b\"}") || lean.contains("late{second=\"b\" first=1}"));
        assert_eq!(lean.matches("INFO").count() + lean.matches("WARN").count(), 5, "{lean}");
        assert_eq!(lean, default);
    }

    #[test]
    fn integers_are_written_in_full() {
        let mut buf = String::new();
        let mut out = String::new();
        let mut visitor = LeanVisitor {
            buf: &mut buf,
            writer: Writer::new(&mut out),
            is_empty: true,
            result: Ok(()),
        };
        for value in [0, 9, 10, 1_000_000_007, u64::MAX] {
            visitor.buf.clear();
            visitor.push_u64(value);
            assert_eq!(*visitor.buf, value.to_string());
        }
    }
}
