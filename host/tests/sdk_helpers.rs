//! The Python and JavaScript SDK helpers' payload errors, run by the
//! languages' own interpreters: a parse error says `payload is not JSON`, a
//! JSON payload of the wrong shape says so (the Rust SDK's are unit tests
//! in `sdk/rust`). The generated WIT bindings the helpers import are only
//! available inside a component, so small stand-ins are put beside them.

use std::path::{Path, PathBuf};
use std::process::Command;

use jetplug_tests::output_text;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `(payload, required fields, expected start of the error or "ok")`.
const CASES: &[(&str, &[&str], &str)] = &[
    (r#"{"student":"s-1"}"#, &["student"], "ok"),
    (r#"{"student":"#, &["student"], "payload is not JSON"),
    (
        r#"{"x":1}"#,
        &["student"],
        "payload JSON has the wrong shape: missing field `student`",
    ),
    (
        r#"[1,2]"#,
        &["student"],
        "payload JSON has the wrong shape: expected an object",
    ),
    (r#"[1,2]"#, &[], "ok"),
];

fn check(lines: &str) -> TestResult {
    let got: Vec<&str> = lines.lines().collect();
    assert_eq!(got.len(), CASES.len(), "{lines}");
    for ((payload, _, want), got) in CASES.iter().zip(got) {
        assert!(got.starts_with(want), "{payload}: {got}");
    }
    Ok(())
}

#[test]
fn python_helper_tells_parse_errors_from_shape_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    std::fs::create_dir_all(d.join("wit_world/imports"))?;
    std::fs::write(
        d.join("componentize_py_types.py"),
        "class Err(Exception): pass\n",
    )?;
    std::fs::write(d.join("wit_world/__init__.py"), "")?;
    let any = "def __getattr__(name):\n    return type(name, (), {})\n";
    std::fs::write(d.join("wit_world/exports.py"), any)?;
    std::fs::write(d.join("wit_world/imports/__init__.py"), "")?;
    std::fs::write(d.join("wit_world/imports/log.py"), any)?;
    std::fs::write(d.join("wit_world/imports/types.py"), any)?;
    let mut script = String::from(
        "import jetplug\nclass M:\n    def __init__(self, p): self.payload = p.encode()\n",
    );
    for (payload, required, _) in CASES {
        script += &format!(
            "try:\n    jetplug.json_payload(M({payload:?}), required={required:?}); print('ok')\n\
             except jetplug.PayloadError as e:\n    print(e)\n"
        );
    }
    let path = std::env::join_paths([d.to_path_buf(), root().join("sdk/python")])?;
    let out = Command::new("python3")
        .args(["-c", &script])
        .env("PYTHONPATH", path)
        .output()?;
    assert!(out.status.success(), "{}", output_text(&out));
    check(&String::from_utf8(out.stdout)?)
}

/// Writes sdk/js/jetplug.js into `d` as `jetplug.mjs`, its `log` import a
/// stand-in.
fn js_helper(d: &Path) -> TestResult {
    let helper = std::fs::read_to_string(root().join("sdk/js/jetplug.js"))?;
    let import = "from 'jetplug:plugin/log@";
    let start = helper
        .find(import)
        .ok_or("jetplug.js no longer imports log")?;
    let end = start + helper[start..].find(';').ok_or("import line")?;
    let helper = format!("{}from './log.mjs'{}", &helper[..start], &helper[end..]);
    std::fs::write(d.join("jetplug.mjs"), helper)?;
    std::fs::write(d.join("log.mjs"), "export const log = () => {};\n")?;
    Ok(())
}

/// Runs `script` with node in `d` (beside the helper); its output.
fn node(d: &Path, script: &str) -> Result<String, Box<dyn std::error::Error>> {
    std::fs::write(d.join("t.mjs"), script)?;
    let out = Command::new("node").arg(d.join("t.mjs")).output()?;
    assert!(out.status.success(), "{}", output_text(&out));
    Ok(String::from_utf8(out.stdout)?)
}

/// QuickJS (componentize-qjs) has no TextDecoder or TextEncoder: the
/// helper's own UTF-8 decoding and encoding must agree with them — valid
/// text, every malformed sequence refused (the same inputs as a strict
/// TextDecoder refuses), lone surrogates — and `origin` keeps the engine's
/// integer type.
#[test]
fn javascript_helper_works_without_text_codecs() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    js_helper(d)?;
    let script = r#"
const TD = globalThis.TextDecoder, TE = globalThis.TextEncoder;
delete globalThis.TextDecoder; delete globalThis.TextEncoder;
const { text, bytes, origin, witError, PayloadError } = await import('./jetplug.mjs');
const strict = new TD('utf-8', { fatal: true }), enc = new TE();
const fail = (m) => { console.log('FAIL ' + m); process.exit(1); };
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const texts = ['', 'hello', 'héllo wörld', '日本語', '😀 𝄞', 'x'.repeat(9000) + 'é' + 'y'.repeat(5000), 'a\ud800b', '\udfff'];
for (const t of texts) {
  if (!same(bytes(t), enc.encode(t))) fail('bytes ' + JSON.stringify(t.slice(0, 20)));
  if (text({ payload: enc.encode(t) }) !== strict.decode(enc.encode(t))) fail('text ' + JSON.stringify(t.slice(0, 20)));
}
let seed = 7;
const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
for (let n = 0; n < 30000; n++) {
  const b = new Uint8Array(Math.floor(rnd() * 8)).map(() => Math.floor(rnd() * 256));
  let want, got;
  try { want = strict.decode(b); } catch { want = null; }
  try { got = text({ payload: b }); } catch (e) { if (!(e instanceof PayloadError)) throw e; got = null; }
  if (want !== got) fail('decode ' + Array.from(b));
}
const m = (seq) => ({ stream: 'S', streamSeq: seq, publishedAtMs: seq, headers: [['Jetplug-Origin', 'DLQ:42']] });
if (typeof origin(m(5n)).sequence !== 'bigint' || typeof origin(m(5)).sequence !== 'number') fail('origin types');
const wit = { tag: 'unavailable', val: 'x' };
if (witError(Object.assign(new Error('e'), { payload: wit })) !== wit || witError(wit) !== wit) fail('witError');
console.log('ok');
"#;
    assert_eq!(node(d, script)?.trim(), "ok");
    Ok(())
}

#[test]
fn javascript_helper_tells_parse_errors_from_shape_errors() -> TestResult {
    let dir = tempfile::tempdir()?;
    let d = dir.path();
    js_helper(d)?;
    let mut script = String::from(
        "import { jsonPayload, PayloadError } from './jetplug.mjs';\n\
         const m = (p) => ({ payload: new TextEncoder().encode(p) });\n",
    );
    for (payload, required, _) in CASES {
        script += &format!(
            "try {{ jsonPayload(m({payload:?}), {required:?}); console.log('ok'); }} \
             catch (e) {{ if (!(e instanceof PayloadError)) throw e; console.log(e.message); }}\n"
        );
    }
    check(&node(d, &script)?)
}
