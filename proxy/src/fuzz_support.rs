//! Exists for the fuzz targets in `fuzz/` and the corpus replay test below; not an API.
//!
//! Each function feeds arbitrary bytes to one parser that takes outside input, exactly as the
//! sidecar runs it, and checks what must hold whatever the input (no panic; a parse that
//! succeeds agrees with itself). The fuzzers call these; `cargo test` replays the committed
//! seeds and every crash found so far through them.

use bytes::BytesMut;

use crate::http1::framing::{BodyDecoder, ChunkedDecoder, Decoded};
use crate::http1::head::{write_request_head, HeaderEdits, Parsed, RequestHead, ResponseHead};

/// The HTTP/1.1 request head parser and the request body framing after it. A head that
/// parses writes out as a head that parses to the same method, target and framing.
pub fn request_head(data: &[u8]) {
    let mut head = RequestHead::default();
    let Ok(Parsed::Complete(len)) = head.parse(data, 64 * 1024) else {
        return;
    };
    let mut rest = BytesMut::from(&data[len..]);
    drain_body(BodyDecoder::new(head.body), &mut rest);
    let mut out = Vec::new();
    write_request_head(&mut out, &head, &HeaderEdits::default(), head.body);
    let mut again = RequestHead::default();
    match again.parse(&out, 64 * 1024) {
        Ok(Parsed::Complete(n)) => {
            assert_eq!(n, out.len());
            assert_eq!(again.method, head.method);
            assert_eq!(again.target(), head.target());
            assert_eq!(again.body, head.body);
        }
        other => panic!(
            "a forwarded head does not parse ({:?}): {:?}",
            other.err(),
            String::from_utf8_lossy(&out)
        ),
    }
}

/// The HTTP/1.1 response head parser and the response body framing after it.
pub fn response_head(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let mut head = ResponseHead::default();
    if let Ok(Parsed::Complete(len)) = head.parse(data, flags & 1 == 1, 64 * 1024) {
        assert!((100..=599).contains(&head.status));
        let mut rest = BytesMut::from(&data[len..]);
        let mut decoder = BodyDecoder::new(head.body);
        drain_body(decoder.clone(), &mut rest);
        let _ = decoder.end_of_input();
    }
}

/// The chunked decoder: fed the same bytes whole and in pieces (sizes taken from the input),
/// it decodes the same data and stops at the same place.
pub fn chunked(data: &[u8]) {
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let whole = decode_in_steps(body, body.len().max(1));
    let pieces = decode_in_steps(body, usize::from(step % 17) + 1);
    assert_eq!(
        whole, pieces,
        "the decoder depends on how its input is split"
    );
}

fn decode_in_steps(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), String> {
    let mut decoder = ChunkedDecoder::default();
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        match decoder.decode(&mut buf).map_err(|e| e.to_string())? {
            Decoded::Data(n) => data.extend_from_slice(&buf.split_to(n)),
            Decoded::End => return Ok((data, fed - buf.len())),
            Decoded::NeedMore if fed == input.len() => return Err("incomplete".into()),
            Decoded::NeedMore => {
                let end = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
        }
    }
}

fn drain_body(mut decoder: BodyDecoder, rest: &mut BytesMut) {
    for _ in 0..1_000_000 {
        match decoder.next(rest) {
            Ok(Decoded::Data(n)) => {
                let _ = rest.split_to(n);
            }
            Ok(Decoded::NeedMore | Decoded::End) | Err(_) => return,
        }
    }
}

/// The Dapr HTTP API's path classifier: method, path, query, `dapr-app-id` and basic auth.
pub fn invoke_target(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(5, '\n');
    let method = parts.next().unwrap_or("GET");
    let method = http::Method::from_bytes(method.as_bytes()).unwrap_or(http::Method::GET);
    let path = parts.next().unwrap_or("/");
    // The listeners only ever see origin-form targets (and `*`): the head parser refuses
    // anything else before classification.
    if !(path.starts_with('/') || path == "*") {
        return;
    }
    let query = parts.next().filter(|q| !q.is_empty());
    let header = parts.next().filter(|h| !h.is_empty());
    let auth = parts.next().filter(|a| !a.is_empty());
    if let crate::listeners::dapr_http::target::ApiRoute::Invoke(target) =
        crate::listeners::dapr_http::target::classify(&method, path, query, header, auth)
    {
        assert!(!target.app_id.is_empty());
        let forwarded = &target.path_and_query;
        assert!(
            forwarded.starts_with('/') || forwarded.starts_with('*'),
            "{forwarded:?}"
        );
        let _ = target.path();
    }
}

/// The state API's request bodies: save, bulk get and transaction JSON, with item checks.
pub fn state_bodies(data: &[u8]) {
    crate::listeners::dapr_http::state::decode_for_fuzzing(data);
}

/// The sidecar's decoding of a discovery response: resources by type, the snapshot they
/// make, and its validation. The first byte picks the type; the rest is resources separated
/// by 0xff bytes.
pub fn discovery_response(data: &[u8]) {
    crate::control_client::decode_for_fuzzing(data);
}

/// The Dapr and mesh YAML loader, with the redaction of what it loads.
pub fn yaml_loader(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(snapshot) = outrigger_config::load_str("fuzz.yaml", &text) {
        let shown = snapshot.redacted();
        assert_eq!(shown.components.len(), snapshot.components.len());
        let _ = outrigger_config::redact::Secrets::of(&snapshot).scrub(&text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every input under `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/`, through its
    /// target, so that `cargo test` keeps every crash a fuzzer ever found fixed.
    #[test]
    fn the_fuzz_corpus_and_regressions_replay_without_a_panic() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        type Target = (&'static str, fn(&[u8]));
        let targets: [Target; 7] = [
            ("request_head", request_head),
            ("response_head", response_head),
            ("chunked", chunked),
            ("invoke_target", invoke_target),
            ("state_bodies", state_bodies),
            ("discovery_response", discovery_response),
            ("yaml_loader", yaml_loader),
        ];
        let mut replayed = 0;
        for (name, target) in targets {
            for kind in ["seeds", "regressions"] {
                let Ok(entries) = std::fs::read_dir(root.join(kind).join(name)) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let input = std::fs::read(entry.path()).unwrap();
                    target(&input);
                    replayed += 1;
                }
            }
        }
        assert!(
            replayed >= 7,
            "only {replayed} inputs replayed; is fuzz/seeds there?"
        );
    }
}
