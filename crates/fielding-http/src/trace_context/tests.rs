//! The recommendation's rules, one test each.

use super::*;

const TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const PARENT: &str = "b7ad6b7169203331";
const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

fn ctx(traceparent: &[&str], tracestate: &[&str]) -> TraceContext {
    TraceContext::from_header_lines(
        traceparent.iter().map(|s| s.as_bytes()),
        tracestate.iter().map(|s| s.as_bytes()),
    )
}

#[track_caller]
fn assert_new_trace(c: &TraceContext) {
    assert!(!c.is_continued(), "expected a new trace, got {c:?}");
    assert_ne!(c.trace_id().to_string(), TRACE);
    assert_eq!(
        c.tracestate(),
        None,
        "tracestate must be dropped with an invalid traceparent"
    );
    let out = c.traceparent();
    assert_eq!(out.len(), 55);
    assert!(out.starts_with("00-"));
}

#[test]
fn a_valid_traceparent_keeps_trace_id_and_flags_with_a_new_span_id() {
    let c = ctx(&[VALID], &[]);
    assert!(c.is_continued());
    assert_eq!(c.trace_id().to_string(), TRACE);
    assert_eq!(c.parent_id().map(|p| p.to_string()).as_deref(), Some(PARENT));
    let out = c.traceparent();
    assert_eq!(&out[..36], &VALID[..36]);
    assert_ne!(&out[36..52], PARENT, "the server's own span id");
    assert_eq!(&out[52..], "-01");
}

#[test]
fn flags_other_than_sampled_are_kept() {
    let c = ctx(&["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"], &[]);
    assert!(c.traceparent().ends_with("-00"));
    let c = ctx(&["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"], &[]);
    assert!(c.traceparent().ends_with("-03"));
}

#[test]
fn all_zero_trace_id_starts_a_new_trace() {
    assert_new_trace(&ctx(
        &["00-00000000000000000000000000000000-b7ad6b7169203331-01"],
        &["a=b"],
    ));
}

#[test]
fn all_zero_parent_id_starts_a_new_trace() {
    assert_new_trace(&ctx(
        &["00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"],
        &["a=b"],
    ));
}

#[test]
fn version_ff_starts_a_new_trace() {
    assert_new_trace(&ctx(
        &["ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
        &["a=b"],
    ));
}

#[test]
fn upper_case_hex_starts_a_new_trace() {
    assert_new_trace(&ctx(
        &["00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"],
        &["a=b"],
    ));
    assert_new_trace(&ctx(
        &["00-0af7651916cd43dd8448eb211c80319c-B7AD6B7169203331-01"],
        &["a=b"],
    ));
    assert_new_trace(&ctx(
        &["0A-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"],
        &["a=b"],
    ));
    assert_new_trace(&ctx(
        &["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0A"],
        &["a=b"],
    ));
}

#[test]
fn a_31_hex_trace_id_starts_a_new_trace() {
    assert_new_trace(&ctx(
        &["00-0af7651916cd43dd8448eb211c80319-b7ad6b7169203331-01"],
        &["a=b"],
    ));
}

#[test]
fn wrong_field_lengths_start_a_new_trace() {
    for bad in [
        "00-0af7651916cd43dd8448eb211c80319c1-b7ad6b716920333-01",
        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b71692033311-1",
        "0-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-011",
        "000-af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    ] {
        assert_new_trace(&ctx(&[bad], &[]));
    }
}

#[test]
fn trailing_data_on_version_00_starts_a_new_trace() {
    assert_new_trace(&ctx(&[&format!("{VALID}-extra")], &["a=b"]));
    assert_new_trace(&ctx(&[&format!("{VALID}x")], &["a=b"]));
}

#[test]
fn non_dash_separators_start_a_new_trace() {
    assert_new_trace(&ctx(&["00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"], &[]));
    assert_new_trace(&ctx(&["00-0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331-01"], &[]));
    assert_new_trace(&ctx(&["00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331_01"], &[]));
}

#[test]
fn too_short_or_empty_starts_a_new_trace() {
    assert_new_trace(&ctx(&[""], &["a=b"]));
    assert_new_trace(&ctx(&[&VALID[..54]], &["a=b"]));
    assert_new_trace(&ctx(&[], &["a=b"]));
}

#[test]
fn a_future_version_with_extra_fields_keeps_the_trace_and_answers_version_00() {
    let c = ctx(
        &["cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-holds"],
        &["a=b"],
    );
    assert!(c.is_continued());
    assert_eq!(c.trace_id().to_string(), TRACE);
    let out = c.traceparent();
    assert!(out.starts_with(&format!("00-{TRACE}-")));
    assert!(out.ends_with("-01"));
    assert_eq!(out.len(), 55);
    assert_eq!(c.tracestate(), Some("a=b"));
}

#[test]
fn a_future_version_of_exactly_four_fields_is_valid() {
    let c = ctx(&["cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"], &[]);
    assert!(c.is_continued());
}

#[test]
fn a_future_version_with_extra_data_not_after_a_dash_is_invalid() {
    assert_new_trace(&ctx(&["cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x"], &[]));
}

#[test]
fn a_repeated_traceparent_starts_a_new_trace_and_drops_tracestate() {
    assert_new_trace(&ctx(&[VALID, VALID], &["a=b"]));
}

#[test]
fn surrounding_whitespace_is_not_part_of_the_value() {
    assert!(ctx(&[&format!("  {VALID}\t")], &[]).is_continued());
}

#[test]
fn tracestate_without_traceparent_is_dropped() {
    let c = ctx(&[], &["congo=t61rcWkgMzE"]);
    assert_eq!(c.tracestate(), None);
}

#[test]
fn tracestate_of_32_members_is_kept_and_33_is_dropped_keeping_traceparent() {
    let members = |n: usize| (0..n).map(|i| format!("k{i}=v{i}")).collect::<Vec<_>>().join(",");
    let kept = ctx(&[VALID], &[&members(32)]);
    assert_eq!(kept.tracestate().map(|s| s.split(',').count()), Some(32));
    let dropped = ctx(&[VALID], &[&members(33)]);
    assert_eq!(dropped.tracestate(), None);
    assert!(dropped.is_continued(), "an invalid tracestate leaves traceparent alone");
    assert_eq!(dropped.trace_id().to_string(), TRACE);
}

#[test]
fn tracestate_lines_form_one_list_and_empty_members_are_skipped() {
    let c = ctx(&[VALID], &["rojo=00f067aa0ba902b7, ,", "congo=t61rcWkgMzE"]);
    assert_eq!(c.tracestate(), Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
    // 33 members across two lines are still too many.
    let first = (0..20).map(|i| format!("a{i}=1")).collect::<Vec<_>>().join(",");
    let second = (0..13).map(|i| format!("b{i}=1")).collect::<Vec<_>>().join(",");
    assert_eq!(ctx(&[VALID], &[&first, &second]).tracestate(), None);
}

#[test]
fn tracestate_duplicate_keys_are_invalid() {
    assert_eq!(ctx(&[VALID], &["a=1,b=2,a=3"]).tracestate(), None);
    assert_eq!(ctx(&[VALID], &["a=1", "a=1"]).tracestate(), None);
}

#[test]
fn tracestate_keys_follow_the_grammar() {
    for good in ["a=1", "a0_-*/=1", "tenant@sys=1", "0tenant@sys=1", "a@b-c_d*e/f=1"] {
        assert!(
            TraceState::parse_lines([good.as_bytes()]).is_ok(),
            "{good:?} should be valid"
        );
    }
    let long_simple = format!("a{}=1", "b".repeat(255));
    assert!(TraceState::parse_lines([long_simple.as_bytes()]).is_ok());
    let too_long_simple = format!("a{}=1", "b".repeat(256));
    let too_long_system = format!("t@s{}=1", "y".repeat(14));
    for bad in [
        "A=1",
        "0abc=1",
        "a b=1",
        "=1",
        "a@=1",
        "@b=1",
        "a@0b=1",
        "a@b@c=1",
        "ä=1",
        too_long_simple.as_str(),
        too_long_system.as_str(),
    ] {
        assert!(
            TraceState::parse_lines([bad.as_bytes()]).is_err(),
            "{bad:?} should be invalid"
        );
    }
}

#[test]
fn tracestate_values_follow_the_grammar() {
    for good in ["a=x", "a=with space", "a=!\"#$%&'()*+-./:;<>?@[]^_`{|}~"] {
        assert!(
            TraceState::parse_lines([good.as_bytes()]).is_ok(),
            "{good:?} should be valid"
        );
    }
    let long = format!("a={}", "v".repeat(256));
    assert!(TraceState::parse_lines([long.as_bytes()]).is_ok());
    let too_long = format!("a={}", "v".repeat(257));
    for bad in ["a=", "a=x=y", "a=del\u{7f}x", "a=tab\tx", "a", too_long.as_str()] {
        assert!(
            TraceState::parse_lines([bad.as_bytes()]).is_err(),
            "{bad:?} should be invalid"
        );
    }
}

#[test]
fn new_traces_are_random_and_well_formed() {
    let a = TraceContext::new_trace();
    let b = TraceContext::new_trace();
    assert_ne!(a.trace_id(), b.trace_id());
    assert_ne!(a.span_id(), b.span_id());
    for c in [a, b] {
        let out = c.traceparent();
        assert_eq!(out.len(), 55);
        assert!(TraceParent::parse(out.as_bytes()).is_ok(), "{out}");
        assert!(out.ends_with("-00"));
    }
}

mod props {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_header_bytes(
            parent in proptest::collection::vec(any::<u8>(), 0..80),
            state in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let c = TraceContext::from_header_lines([&parent[..]], [&state[..]]);
            prop_assert_eq!(c.traceparent().len(), 55);
        }

        #[test]
        fn any_valid_traceparent_is_continued(
            version in 0u8..0xff,
            trace in any::<[u8; 16]>().prop_filter("non-zero", |t| t != &[0; 16]),
            parent in any::<[u8; 8]>().prop_filter("non-zero", |p| p != &[0; 8]),
            flags in any::<u8>(),
        ) {
            let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
            let header = format!("{version:02x}-{}-{}-{flags:02x}", hex(&trace), hex(&parent));
            let c = TraceContext::from_header_lines([header.as_bytes()], std::iter::empty());
            prop_assert!(c.is_continued());
            prop_assert_eq!(c.trace_id().to_bytes(), trace);
            prop_assert_eq!(c.flags(), TraceFlags(flags));
            prop_assert_ne!(c.span_id().to_bytes(), parent);
        }
    }
}

#[test]
fn whitespace_around_tracestate_members_is_list_whitespace_not_value() {
    let state = TraceState::parse_lines([&b"a=ends with space ,b=2"[..]]).unwrap();
    assert_eq!(state.header(), "a=ends with space,b=2");
}

#[test]
fn the_response_traceparent_is_the_display_of_its_parts() {
    for _ in 0..200 {
        let context = TraceContext::from_header_lines(
            [b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".as_slice()],
            [],
        );
        let expected = format!("00-{}-{}-{}", context.trace_id(), context.span_id(), context.flags());
        assert_eq!(context.traceparent(), expected);
        assert!(TraceParent::parse(context.traceparent().as_bytes()).is_ok());
        let fresh = TraceContext::new_trace();
        assert!(TraceParent::parse(fresh.traceparent().as_bytes()).is_ok());
        assert_eq!(fresh.trace_id().to_string().len(), 32);
        assert_ne!(fresh.trace_id(), TraceContext::new_trace().trace_id());
    }
}
