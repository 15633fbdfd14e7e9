//! The files a distribution package ships beside the binary, generated from the CLI itself so
//! they cannot drift from it: the man page (`clap_mangen`) and the bash, zsh and fish completions
//! (`clap_complete`). `nexudus-nevis-sync --generate-packaging-files DIR` writes them; the Debian
//! package (scripts/package.sh, `[package.metadata.deb]` in Cargo.toml) installs them.

use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use clap_complete::Shell;

/// The hidden first argument that asks the binary for its packaging files instead of a run.
/// Kept out of the `Cli` struct so it never shows in `--help` or the man page it generates.
pub const GENERATE_FLAG: &str = "--generate-packaging-files";

/// The directory the arguments ask the packaging files to be written to, when the first argument
/// is [`GENERATE_FLAG`]; `Err` when the flag is there without exactly one directory after it.
pub fn requested_dir(args: &[OsString]) -> Option<Result<PathBuf, String>> {
    if args.get(1).map(OsString::as_os_str) != Some(GENERATE_FLAG.as_ref()) {
        return None;
    }
    Some(match args {
        [_, _, dir] => Ok(PathBuf::from(dir)),
        _ => Err(format!("usage: {GENERATE_FLAG} DIR")),
    })
}

/// Writes the man page and the completions for `cmd` into `dir`, laid out as they are installed
/// (`man/NAME.1`, `completions/NAME.bash`, `completions/_NAME`, `completions/NAME.fish`), and
/// returns the files written.
pub fn write_files(mut cmd: clap::Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let name = cmd.get_name().to_string();
    cmd.build();
    let man_dir = dir.join("man");
    let completions_dir = dir.join("completions");
    fs::create_dir_all(&man_dir)?;
    fs::create_dir_all(&completions_dir)?;

    let mut written = Vec::new();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    let man_path = man_dir.join(format!("{name}.1"));
    fs::write(&man_path, page)?;
    written.push(man_path);

    for (shell, file) in [
        (Shell::Bash, format!("{name}.bash")),
        (Shell::Zsh, format!("_{name}")),
        (Shell::Fish, format!("{name}.fish")),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut cmd, name.clone(), &mut script);
        let path = completions_dir.join(file);
        fs::write(&path, script)?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    #[test]
    fn only_the_first_argument_asks_for_the_files() {
        assert_eq!(requested_dir(&args(&["bin", "--demo"])), None);
        assert_eq!(
            requested_dir(&args(&["bin", "--demo", GENERATE_FLAG, "x"])),
            None
        );
        assert_eq!(
            requested_dir(&args(&["bin", GENERATE_FLAG, "out"])),
            Some(Ok(PathBuf::from("out")))
        );
        assert!(matches!(
            requested_dir(&args(&["bin", GENERATE_FLAG])),
            Some(Err(_))
        ));
    }

    #[test]
    fn writes_a_man_page_and_three_completions_naming_every_flag() {
        let cmd = clap::Command::new("tool").about("does things").arg(
            clap::Arg::new("dry_run")
                .long("dry-run")
                .action(clap::ArgAction::SetTrue),
        );
        let dir = tempfile::tempdir().expect("temp dir");
        let written = write_files(cmd, dir.path()).expect("files written");
        assert_eq!(written.len(), 4);
        for path in &written {
            let text = fs::read_to_string(path).expect("generated file is text");
            assert!(text.contains("dry"), "{} names --dry-run", path.display());
        }
        assert!(dir.path().join("man/tool.1").is_file());
        assert!(dir.path().join("completions/_tool").is_file());
    }
}
