//! The binary run as a user runs it, to its end.

use std::process::Command;

use super::bin;

/// Runs the binary; whether it succeeded, and what it printed.
pub fn run(args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!text.contains("panicked"), "{args:?} panicked:\n{text}");
    (out.status.success(), text)
}
