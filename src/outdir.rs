//! Output folders cmh owns: a marker file identifies a folder cmh created (a run, a demo report,
//! a bundle, search results), and cmh deletes or replaces only folders that carry it.
//!
//! - `prepare`: a new output folder for a command: created and marked when absent or empty;
//!   an existing folder of the same kind is kept (the caller decides whether to continue it) or,
//!   with `force`, replaced; a non-empty folder without the marker is refused, `force` or not.
//! - `clean_partials`: removes what an interrupted write of the same folder left behind
//!   (`.partial-*` folders, `.*.tmp` files), only inside a marked folder.
//! - `partial_prefix`: names the temporary folder a command builds a new folder in (beside it,
//!   renamed into place when complete) and removes those of earlier killed runs for the same output.

use anyhow::{bail, Context, Result};
use std::path::Path;

/// The marker file inside every folder cmh created; its content names the kind of folder.
pub const MARKER: &str = ".cmh-output";

/// What a marked folder holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A `cmh train` run folder.
    Run,
    /// A `cmh demo` report folder.
    Demo,
    /// A dataset bundle.
    Bundle,
    /// `cmh search` results.
    Search,
    /// A `cmh tune` search.
    Tune,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Run => "run",
            Kind::Demo => "demo",
            Kind::Bundle => "bundle",
            Kind::Search => "search",
            Kind::Tune => "tune",
        }
    }
}

/// The kind recorded in `dir`'s marker, when it has one cmh can read.
pub(crate) fn marked_kind(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(MARKER)).ok()?;
    Some(text.lines().next().unwrap_or("").trim().to_string())
}

/// Whether `dir` carries the marker of `kind`.
pub(crate) fn is_marked(dir: &Path, kind: Kind) -> bool {
    marked_kind(dir).as_deref() == Some(kind.name())
}

/// Writes the marker of `kind` into `dir` (which must exist).
pub(crate) fn mark(dir: &Path, kind: Kind) -> Result<()> {
    let text = format!("{}\nThis folder was written by cmh; cmh replaces or cleans only folders that carry this file.\n", kind.name());
    std::fs::write(dir.join(MARKER), text).with_context(|| format!("{}: cannot write into the output folder", dir.display()))
}

fn is_empty_dir(dir: &Path) -> Result<bool> {
    Ok(std::fs::read_dir(dir).with_context(|| format!("{}: cannot list the folder", dir.display()))?.next().is_none())
}

/// The state of an output folder after `prepare`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prepared {
    /// Created (or was empty) and marked: nothing of an earlier command is in it.
    Fresh,
    /// Already a marked folder of this kind, left as it is (continue it, or refuse).
    Existing,
}

/// Checks, without creating anything, that `prepare` would accept `dir` (without `force`).
pub fn check(dir: &Path, kind: Kind, flag: &str) -> Result<()> {
    let p = dir.display();
    if dir.exists() && !dir.is_dir() {
        bail!("{flag} {p}: is a file, not a folder; give a folder path");
    }
    if dir.is_dir() && !is_empty_dir(dir)? {
        match marked_kind(dir) {
            Some(k) if k == kind.name() => {}
            Some(k) => bail!("{flag} {p}: holds cmh output of another kind ({k}), not a {}; choose another folder", kind.name()),
            None => bail!(
                "{flag} {p}: the folder is not empty and was not created by cmh (it has no {MARKER} file); cmh never deletes \
                 or mixes into such a folder: choose a new or empty folder"
            ),
        }
    }
    Ok(())
}

/// Refuses outputs that would overwrite an input: `outputs` are the files a command will write,
/// `inputs` the (flag, path) pairs it reads.
pub fn refuse_overwriting_inputs(outputs: &[std::path::PathBuf], inputs: &[(&str, &Path)]) -> Result<()> {
    // The same file by any spelling: canonical paths of existing files, else of the parent folder.
    let canon = |p: &Path| -> Option<std::path::PathBuf> {
        std::fs::canonicalize(p).ok().or_else(|| {
            let parent = p.parent().filter(|q| !q.as_os_str().is_empty()).unwrap_or(Path::new("."));
            Some(std::fs::canonicalize(parent).ok()?.join(p.file_name()?))
        })
    };
    for out in outputs {
        let Some(o) = canon(out) else { continue };
        for (flag, input) in inputs {
            if canon(input).is_some_and(|i| i == o) {
                bail!("{flag} {}: would be overwritten by the output {}; write the output elsewhere", input.display(), out.display());
            }
        }
    }
    Ok(())
}

/// Prepares the output folder `dir` of a command writing `kind` (`flag` names the option in
/// messages, e.g. `--out`): see the module documentation. With `force`, an existing marked folder
/// of the same kind is deleted and made again.
pub(crate) fn prepare(dir: &Path, kind: Kind, flag: &str, force: bool) -> Result<Prepared> {
    check(dir, kind, flag)?;
    if dir.is_dir() && !is_empty_dir(dir)? {
        // A marked folder of this kind (`check` refused every other non-empty folder).
        if !force {
            return Ok(Prepared::Existing);
        }
        std::fs::remove_dir_all(dir).with_context(|| format!("{flag} {}: cannot remove the earlier output", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("{flag} {}: cannot create the folder", dir.display()))?;
    mark(dir, kind).with_context(|| format!("{flag} {}: the folder is not writable", dir.display()))?;
    Ok(Prepared::Fresh)
}

/// Removes the leftovers of interrupted writes in a marked folder: `.partial-*` folders and
/// `.*.tmp` files (the temporary names of atomic writes). A folder without the marker is left alone.
pub(crate) fn clean_partials(dir: &Path) -> Result<()> {
    if marked_kind(dir).is_none() {
        return Ok(());
    }
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(()) };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let path = e.path();
        if name.starts_with(".partial-") && path.is_dir() {
            std::fs::remove_dir_all(&path)
                .with_context(|| format!("{}: cannot remove the leftover of an interrupted run", path.display()))?;
        } else if name.starts_with('.') && name.ends_with(".tmp") && path.is_file() {
            std::fs::remove_file(&path)
                .with_context(|| format!("{}: cannot remove the leftover of an interrupted write", path.display()))?;
        }
    }
    Ok(())
}

/// The name prefix of the temporary folder in which a command builds the folder `out` before
/// renaming it into place (`.partial-WHAT-NAME-PID-`), after removing what earlier runs of the
/// same command for the same `out` left behind when they were killed: `.partial-WHAT-NAME-PID-*`
/// folders in `out`'s parent whose process is gone. Folders of running processes, of other
/// outputs and of anything else are left alone.
pub(crate) fn partial_prefix(out: &Path, what: &str) -> Result<String> {
    let name = out.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let stem = format!(".partial-{what}-{name}-");
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if let Ok(entries) = std::fs::read_dir(parent) {
        for e in entries.flatten() {
            let entry = e.file_name().to_string_lossy().to_string();
            let Some(pid) = entry.strip_prefix(&stem).and_then(|rest| rest.split('-').next()).and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if pid > 0 && !process_alive(pid) && e.path().is_dir() {
                std::fs::remove_dir_all(e.path())
                    .with_context(|| format!("{}: cannot remove the leftover of an interrupted run", e.path().display()))?;
            }
        }
    }
    Ok(format!("{stem}{}-", std::process::id()))
}

/// Whether a process `pid` exists (signal 0 reaches it, or exists but belongs to another user).
fn process_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 sends nothing; it only checks that the process exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unmarked_folders_are_never_replaced() {
        let d = tempfile::tempdir().unwrap();
        let user = d.path().join("mine");
        std::fs::create_dir(&user).unwrap();
        std::fs::write(user.join("thesis.tex"), "x").unwrap();
        for force in [false, true] {
            let e = format!("{:#}", prepare(&user, Kind::Run, "--out", force).unwrap_err());
            assert!(e.contains("--out") && e.contains("not created by cmh"), "{e}");
        }
        assert!(user.join("thesis.tex").is_file());
        // Empty and absent folders become marked outputs.
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert_eq!(prepare(&empty, Kind::Run, "--out", false).unwrap(), Prepared::Fresh);
        assert!(is_marked(&empty, Kind::Run));
        let new = d.path().join("a/b");
        assert_eq!(prepare(&new, Kind::Search, "--out", false).unwrap(), Prepared::Fresh);
        // A marked folder of the same kind is kept, or replaced with force; another kind is refused.
        std::fs::write(empty.join("old.json"), "{}").unwrap();
        assert_eq!(prepare(&empty, Kind::Run, "--out", false).unwrap(), Prepared::Existing);
        assert!(empty.join("old.json").is_file());
        assert!(format!("{:#}", prepare(&empty, Kind::Bundle, "--out", true).unwrap_err()).contains("another kind (run)"));
        assert_eq!(prepare(&empty, Kind::Run, "--out", true).unwrap(), Prepared::Fresh);
        assert!(!empty.join("old.json").exists() && is_marked(&empty, Kind::Run));
        // A file is not a folder.
        std::fs::write(d.path().join("f"), "x").unwrap();
        assert!(format!("{:#}", prepare(&d.path().join("f"), Kind::Run, "--out", true).unwrap_err()).contains("is a file"));
    }

    #[test]
    fn partial_leftovers_are_cleaned_only_in_marked_folders() {
        let d = tempfile::tempdir().unwrap();
        for marked in [false, true] {
            let dir = d.path().join(format!("m{marked}"));
            std::fs::create_dir_all(dir.join(".partial-bits8-seed0-x")).unwrap();
            std::fs::write(dir.join(".report.json.abc.tmp"), "x").unwrap();
            std::fs::write(dir.join("keep.npy"), "x").unwrap();
            if marked {
                mark(&dir, Kind::Run).unwrap();
            }
            clean_partials(&dir).unwrap();
            assert_eq!(dir.join(".partial-bits8-seed0-x").exists(), !marked);
            assert_eq!(dir.join(".report.json.abc.tmp").exists(), !marked);
            assert!(dir.join("keep.npy").is_file());
        }
    }

    #[test]
    fn partial_folders_of_killed_runs_for_the_same_output_are_removed() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("valid");
        // A finished child's pid is free again (a process that no longer exists).
        let dead = std::process::Command::new("true").spawn().unwrap();
        let dead_pid = dead.id();
        let mut dead = dead;
        dead.wait().unwrap();
        let me = std::process::id();
        let stale = d.path().join(format!(".partial-validation-valid-{dead_pid}-abc"));
        let live = d.path().join(format!(".partial-validation-valid-{me}-def"));
        let other = d.path().join(format!(".partial-validation-other-{dead_pid}-ghi"));
        let kind = d.path().join(format!(".partial-embed-text-valid-{dead_pid}-jkl"));
        for p in [&stale, &live, &other, &kind] {
            std::fs::create_dir(p).unwrap();
        }
        let prefix = partial_prefix(&out, "validation").unwrap();
        assert_eq!(prefix, format!(".partial-validation-valid-{me}-"));
        assert!(!stale.exists(), "the leftover of a killed run for the same output is removed");
        assert!(live.exists() && other.exists() && kind.exists(), "a running process's, another output's, another command's stay");
    }
}
