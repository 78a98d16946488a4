//! The operator CLI (`upshift graph|rollout|lock|fleet|status|health`)
//! against real service processes, with golden outputs.
//!
//! Human tables are compared with `tests/golden/*.txt` after replacing
//! what depends on the moment of the run (see [`placeholders`]) and
//! collapsing column padding; rewrite the
//! files with `UPSHIFT_BLESS=1 cargo test -p upshift-integration --test cli`.
//! JSON outputs are parsed with serde_json and checked field by field.

// A test crate root resolves `mod x;` next to itself, so the modules under
// cli/ are named by path.
#[path = "cli/fleet.rs"]
mod fleet;
#[path = "cli/graph.rs"]
mod graph;
#[path = "cli/lock.rs"]
mod lock;
#[path = "cli/rollout.rs"]
mod rollout;
#[path = "cli/status.rs"]
mod status;
#[path = "cli/support.rs"]
mod support;
#[path = "cli/tls.rs"]
mod tls;

use support::{collapse, placeholders};

#[test]
fn placeholders_keep_fixture_times_and_replace_run_dependent_values() {
    let urls = vec![("http://127.0.0.1:4321".to_string(), "<lock-url>")];
    let text = "A     B  2021-11-02T16:00:00Z  2026-11-25T10:54:44Z  n (12s) 1m05s 2h03m 3d04h 2880m 34.20211016.3.0\nhttp://127.0.0.1:4321\n";
    assert_eq!(
        collapse(&placeholders(text, &urls)),
        "A  B  2021-11-02T16:00:00Z  ____-__-__T__:__:__Z  n (<age>) <age> <age> <age> 2880m 34.20211016.3.0\n<lock-url>\n"
    );
}
