//! W3C Trace Context: `traceparent` and `tracestate`, parsed strictly.
//!
//! Why our own parser: the popular propagators are lenient (they accept ids
//! of the wrong length, upper-case hex, trailing garbage), and a lenient
//! parser lets a malformed header poison a whole trace. The rules here are
//! those of the W3C Trace Context recommendation:
//!
//! * `traceparent` is `version-traceid-parentid-flags`: lower-case hex of
//!   lengths 2, 32, 16 and 2. Version `ff` is invalid; version `00` has
//!   exactly these four fields; a higher version is parsed by its first four
//!   fields (and anything after them must start with `-`). An all-zero trace
//!   id or parent id is invalid.
//! * An invalid, missing or repeated `traceparent` starts a new trace, and
//!   `tracestate` is dropped with it (it belongs to the trace it came with).
//! * `tracestate` is a list of up to 32 `key=value` members with the
//!   recommendation's key and value grammar and no duplicate keys; when it
//!   is invalid it is dropped, without touching `traceparent`. Several
//!   `tracestate` lines form one list.
//! * The server continues the trace with a span id of its own: the response
//!   `traceparent` is version `00`, the same trace id and flags, and the new
//!   span id.
//!
//! ```
//! use fielding_http::trace_context::TraceContext;
//! let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
//! let ctx = TraceContext::from_header_lines([incoming.as_bytes()], ["congo=t61rcWkgMzE".as_bytes()]);
//! assert!(ctx.is_continued());
//! assert_eq!(ctx.trace_id().to_string(), "0af7651916cd43dd8448eb211c80319c");
//! let outgoing = ctx.traceparent();
//! assert!(outgoing.starts_with("00-0af7651916cd43dd8448eb211c80319c-"));
//! assert!(outgoing.ends_with("-01"));
//! assert_ne!(&outgoing[36..52], "b7ad6b7169203331"); // our own span id
//! assert_eq!(ctx.tracestate(), Some("congo=t61rcWkgMzE"));
//! ```

use std::fmt;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// Middleware for any axum router (`axum::middleware::from_fn(propagate)`):
/// continues the caller's trace (or starts one), runs the request inside a
/// `request` span (`INFO`: `method`, `path`, `trace_id`, `span_id`, and
/// the response's `status`; never a header's value, so never a token),
/// makes the [`TraceId`] available
/// to handlers as a request extension, and puts `traceparent` (and a valid
/// `tracestate`) on every response, errors and fallbacks included.
/// [`crate::FieldingApi::router`] mounts it; mount it on your own routes
/// beside the API so that their responses join the caller's trace too.
///
/// ```
/// use axum::{middleware, routing::get, Router};
/// let health: Router = Router::new()
///     .route("/health", get(|| async { "ok" }))
///     .layer(middleware::from_fn(fielding_http::trace_context::propagate));
/// ```
pub async fn propagate(request: Request, next: Next) -> Response {
    traced(request, |mut request, trace_id| {
        request.extensions_mut().insert(trace_id);
        next.run(request)
    })
    .await
}

/// The header names, parsed once rather than from text on every lookup.
const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// [`propagate`] around `run`: what the API's own service
/// ([`crate::FieldingApi::into_service`]) calls, without a middleware
/// layer's boxing of the rest of the stack. `run` gets the [`TraceId`]
/// beside the request: it puts it in the request's extensions when a
/// handler may need it (every `propagate`d route, the API's router),
/// and need not when it serves the request itself.
pub(crate) async fn traced<F, R>(request: Request, run: R) -> Response
where
    R: FnOnce(Request, TraceId) -> F,
    F: std::future::Future<Output = Response>,
{
    let headers = request.headers();
    let context = TraceContext::from_header_lines(
        headers.get_all(TRACEPARENT).iter().map(HeaderValue::as_bytes),
        headers.get_all(TRACESTATE).iter().map(HeaderValue::as_bytes),
    );
    let span = tracing::info_span!(
        "request",
        method = %request.method(),
        path = %request.uri().path(),
        trace_id = %context.trace_id(),
        span_id = %context.span_id(),
        status = tracing::field::Empty,
    );
    let mut response = run(request, context.trace_id()).instrument(span.clone()).await;
    span.record("status", response.status().as_u16());
    let out = response.headers_mut();
    if let Ok(value) = HeaderValue::from_bytes(&context.traceparent_bytes()) {
        out.insert(TRACEPARENT, value);
    }
    if let Some(value) = context.tracestate().and_then(|s| HeaderValue::from_str(s).ok()) {
        out.insert(TRACESTATE, value);
    }
    response
}

/// The most list members a valid `tracestate` may have.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// A 16-byte trace id, never all zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// An 8-byte span (parent) id, never all zeros.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

/// The trace flags byte; bit 0 is "sampled".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceFlags(pub u8);

/// Random bytes from the thread's generator (ChaCha, seeded from the OS and
/// reseeded by `rand`): ids need to be unpredictable and unique, and every
/// request makes one, so they must not cost a system call each (as
/// `getrandom` per id would; see `docs/benchmarks.md`).
fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::RngCore;
    let mut out = [0u8; N];
    let mut rng = rand::rng();
    loop {
        rng.fill_bytes(&mut out);
        // All zeros is invalid; with 64+ random bits this loop runs once.
        if out.iter().any(|&b| b != 0) {
            return out;
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes` into `out` (twice as long).
fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0x0f)];
    }
}

impl TraceId {
    /// A fresh random trace id.
    pub fn random() -> Self {
        Self(random_bytes())
    }

    /// The raw bytes.
    pub fn to_bytes(self) -> [u8; 16] {
        self.0
    }
}

impl SpanId {
    /// A fresh random span id.
    pub fn random() -> Self {
        Self(random_bytes())
    }

    /// The raw bytes.
    pub fn to_bytes(self) -> [u8; 8] {
        self.0
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    let mut buf = [0u8; 32];
    let out = &mut buf[..bytes.len() * 2];
    hex_into(bytes, out);
    // Only ASCII hex digits were written.
    f.write_str(std::str::from_utf8(out).unwrap_or_default())
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for TraceFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}", self.0)
    }
}

/// Why a `traceparent` value was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidTraceParent {
    /// Shorter than the 55 characters of version `00`.
    TooShort,
    /// Version `00` with more than its four fields.
    TrailingData,
    /// A field is not lower-case hex of the right length, or a separator is
    /// not `-`.
    Malformed(&'static str),
    /// Version `ff`, which the recommendation forbids.
    ForbiddenVersion,
    /// An all-zero trace id or parent id.
    ZeroId(&'static str),
    /// More than one `traceparent` header line.
    Repeated,
}

impl fmt::Display for InvalidTraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort => f.write_str("traceparent is shorter than 55 characters"),
            Self::TrailingData => f.write_str("version 00 traceparent has data after the flags"),
            Self::Malformed(field) => write!(f, "traceparent {field} is not lower-case hex of the right length"),
            Self::ForbiddenVersion => f.write_str("traceparent version ff is invalid"),
            Self::ZeroId(field) => write!(f, "traceparent {field} is all zeros"),
            Self::Repeated => f.write_str("traceparent was sent more than once"),
        }
    }
}

impl std::error::Error for InvalidTraceParent {}

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The version as received (`0` for `00`).
    pub version: u8,
    /// The trace this request belongs to.
    pub trace_id: TraceId,
    /// The caller's span.
    pub parent_id: SpanId,
    /// The caller's flags.
    pub flags: TraceFlags,
}

fn lower_hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn parse_hex<const N: usize>(text: &[u8], field: &'static str) -> Result<[u8; N], InvalidTraceParent> {
    if text.len() != 2 * N {
        return Err(InvalidTraceParent::Malformed(field));
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let hi = lower_hex_value(pair[0]).ok_or(InvalidTraceParent::Malformed(field))?;
        let lo = lower_hex_value(pair[1]).ok_or(InvalidTraceParent::Malformed(field))?;
        out[i] = hi << 4 | lo;
    }
    Ok(out)
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

impl TraceParent {
    /// Parses one `traceparent` value.
    ///
    /// ```
    /// use fielding_http::trace_context::TraceParent;
    /// assert!(TraceParent::parse(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").is_ok());
    /// assert!(TraceParent::parse(b"00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01").is_err());
    /// assert!(TraceParent::parse(b"cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-future").is_ok());
    /// ```
    pub fn parse(value: &[u8]) -> Result<Self, InvalidTraceParent> {
        let value = trim_ows(value);
        if value.len() < 55 {
            return Err(InvalidTraceParent::TooShort);
        }
        let [version] = parse_hex::<1>(&value[0..2], "version")?;
        if version == 0xff {
            return Err(InvalidTraceParent::ForbiddenVersion);
        }
        for (at, field) in [(2, "separator"), (35, "separator"), (52, "separator")] {
            if value[at] != b'-' {
                return Err(InvalidTraceParent::Malformed(field));
            }
        }
        let trace_id = parse_hex::<16>(&value[3..35], "trace-id")?;
        let parent_id = parse_hex::<8>(&value[36..52], "parent-id")?;
        let [flags] = parse_hex::<1>(&value[53..55], "trace-flags")?;
        if value.len() > 55 {
            if version == 0 {
                return Err(InvalidTraceParent::TrailingData);
            }
            // A future version may add fields, but only after a dash.
            if value[55] != b'-' {
                return Err(InvalidTraceParent::Malformed("separator"));
            }
        }
        if trace_id == [0; 16] {
            return Err(InvalidTraceParent::ZeroId("trace-id"));
        }
        if parent_id == [0; 8] {
            return Err(InvalidTraceParent::ZeroId("parent-id"));
        }
        Ok(Self {
            version,
            trace_id: TraceId(trace_id),
            parent_id: SpanId(parent_id),
            flags: TraceFlags(flags),
        })
    }
}

/// Why a `tracestate` was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidTraceState {
    /// More than [`MAX_TRACESTATE_MEMBERS`] members.
    TooManyMembers(usize),
    /// A member is not `key=value` with a valid key and value.
    BadMember(String),
    /// The same key twice.
    DuplicateKey(String),
    /// Not ASCII text.
    NotText,
}

impl fmt::Display for InvalidTraceState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooManyMembers(n) => write!(f, "tracestate has {n} members, more than {MAX_TRACESTATE_MEMBERS}"),
            Self::BadMember(m) => write!(f, "tracestate member {m:?} is not a valid key=value"),
            Self::DuplicateKey(k) => write!(f, "tracestate key {k:?} appears twice"),
            Self::NotText => f.write_str("tracestate is not ASCII text"),
        }
    }
}

impl std::error::Error for InvalidTraceState {}

/// A valid `tracestate`: its members in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceState {
    header: String,
    members: usize,
}

fn is_key_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-' | b'*' | b'/')
}

/// `simple-key` or `tenant-id@system-id`.
fn valid_key(key: &[u8]) -> bool {
    match key.iter().position(|&b| b == b'@') {
        None => {
            matches!(key.first(), Some(b) if b.is_ascii_lowercase())
                && key.len() <= 256
                && key.iter().all(|&b| is_key_char(b))
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            matches!(tenant.first(), Some(b) if b.is_ascii_lowercase() || b.is_ascii_digit())
                && tenant.len() <= 241
                && tenant.iter().all(|&b| is_key_char(b))
                && matches!(system.first(), Some(b) if b.is_ascii_lowercase())
                && system.len() <= 14
                && system.iter().all(|&b| is_key_char(b))
        }
    }
}

/// 1 to 256 printable ASCII characters except `,` and `=`, not ending in a
/// space.
fn valid_value(value: &[u8]) -> bool {
    let nblk = |b: u8| (0x21..=0x7e).contains(&b) && b != b',' && b != b'=';
    !value.is_empty()
        && value.len() <= 256
        && value.iter().all(|&b| b == b' ' || nblk(b))
        && value.last().is_some_and(|&b| nblk(b))
}

impl TraceState {
    /// Parses all `tracestate` header lines as one list. Empty members are
    /// skipped; keys must be unique; at most 32 members.
    ///
    /// ```
    /// use fielding_http::trace_context::TraceState;
    /// let state = TraceState::parse_lines([&b"rojo=00f067aa0ba902b7"[..], &b" congo=t61rcWkgMzE,"[..]])?;
    /// assert_eq!(state.header(), "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE");
    /// assert!(TraceState::parse_lines([&b"a=1,a=2"[..]]).is_err());
    /// # Ok::<(), fielding_http::trace_context::InvalidTraceState>(())
    /// ```
    pub fn parse_lines<'a, I>(lines: I) -> Result<Self, InvalidTraceState>
    where
        I: IntoIterator<Item = &'a [u8]>,
    {
        let mut keys: Vec<&[u8]> = Vec::new();
        let mut members: Vec<&[u8]> = Vec::new();
        for line in lines {
            for member in line.split(|&b| b == b',') {
                let member = trim_ows(member);
                if member.is_empty() {
                    continue;
                }
                let text = || String::from_utf8_lossy(member).into_owned();
                let Some(eq) = member.iter().position(|&b| b == b'=') else {
                    return Err(InvalidTraceState::BadMember(text()));
                };
                let (key, value) = (&member[..eq], &member[eq + 1..]);
                if !valid_key(key) || !valid_value(value) {
                    return Err(InvalidTraceState::BadMember(text()));
                }
                if keys.contains(&key) {
                    return Err(InvalidTraceState::DuplicateKey(
                        String::from_utf8_lossy(key).into_owned(),
                    ));
                }
                keys.push(key);
                members.push(member);
            }
        }
        if members.len() > MAX_TRACESTATE_MEMBERS {
            return Err(InvalidTraceState::TooManyMembers(members.len()));
        }
        let joined = members.join(&b","[..]);
        let header = String::from_utf8(joined).map_err(|_| InvalidTraceState::NotText)?;
        Ok(Self {
            header,
            members: members.len(),
        })
    }

    /// The list as one header value, members joined by `,`.
    pub fn header(&self) -> &str {
        &self.header
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members
    }

    /// Whether the list has no members.
    pub fn is_empty(&self) -> bool {
        self.members == 0
    }
}

/// The trace context of one request, as this server continues it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    trace_id: TraceId,
    parent_id: Option<SpanId>,
    span_id: SpanId,
    flags: TraceFlags,
    tracestate: Option<TraceState>,
}

impl TraceContext {
    /// A new trace: random trace id and span id, flags `00` (this server
    /// makes no sampling decision), no `tracestate`.
    pub fn new_trace() -> Self {
        Self {
            trace_id: TraceId::random(),
            parent_id: None,
            span_id: SpanId::random(),
            flags: TraceFlags(0),
            tracestate: None,
        }
    }

    /// The context for a request that carried these `traceparent` and
    /// `tracestate` header lines (each header's lines in order).
    pub fn from_header_lines<'a, P, S>(traceparent: P, tracestate: S) -> Self
    where
        P: IntoIterator<Item = &'a [u8]>,
        S: IntoIterator<Item = &'a [u8]>,
    {
        let mut lines = traceparent.into_iter();
        let parent = match (lines.next(), lines.next()) {
            (Some(only), None) => TraceParent::parse(only),
            (None, _) => return Self::new_trace(),
            (Some(_), Some(_)) => Err(InvalidTraceParent::Repeated),
        };
        let Ok(parent) = parent else {
            return Self::new_trace();
        };
        let state = TraceState::parse_lines(tracestate).ok().filter(|s| !s.is_empty());
        Self {
            trace_id: parent.trace_id,
            parent_id: Some(parent.parent_id),
            span_id: SpanId::random(),
            flags: parent.flags,
            tracestate: state,
        }
    }

    /// Whether the request's `traceparent` was valid and this continues it.
    pub fn is_continued(&self) -> bool {
        self.parent_id.is_some()
    }

    /// The trace id (the caller's, or a new one).
    pub fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// This server's span id.
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    /// The caller's span id, when the trace was continued.
    pub fn parent_id(&self) -> Option<SpanId> {
        self.parent_id
    }

    /// The flags (the caller's, or `00` for a new trace).
    pub fn flags(&self) -> TraceFlags {
        self.flags
    }

    /// The response `traceparent`: version `00`, the trace id, this
    /// server's span id, the flags.
    pub fn traceparent(&self) -> String {
        String::from_utf8_lossy(&self.traceparent_bytes()).into_owned()
    }

    /// [`TraceContext::traceparent`] as bytes on the stack: a response
    /// header copies it once, with no `String` in between.
    fn traceparent_bytes(&self) -> [u8; 55] {
        // `00-` 32 hex `-` 16 hex `-` 2 hex: built by hand, once per
        // response, without the formatting machinery.
        let mut out = *b"00-00000000000000000000000000000000-0000000000000000-00";
        hex_into(&self.trace_id.0, &mut out[3..35]);
        hex_into(&self.span_id.0, &mut out[36..52]);
        hex_into(&[self.flags.0], &mut out[53..55]);
        out
    }

    /// The response `tracestate`, when the request carried a valid one.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_ref().map(TraceState::header)
    }
}

#[cfg(test)]
mod tests;
