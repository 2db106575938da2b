//! The fault-injection suite: the real binaries, killed or starved of disk space at every file
//! operation of a save, and fed forged checkpoints, hostile pickles, images and folders. Every
//! case asserts: no panic and no abort (a panic exits 101, an abort dies of SIGABRT), a
//! non-zero exit with a message naming the file when the input is bad, and nothing saved before
//! lost or changed.
//!
//! Kills and full disks go through the writer's hook (`AUE_FAULT_AT=N`: the N-th file
//! operation of the process is a SIGKILL, or with `AUE_FAULT=enospc` fails with ENOSPC; see
//! aue-contract's `fsio`). N walks from 1 until a run finishes untouched, so every save
//! boundary of an epoch is hit.

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Output;

use aue_contract::meta::Commit;
use aue_tests::{copy_tree, meta, metrics, run, snapshot, stage_args, strs, synth, tensors, text};

/// No panic (exit 101), no abort (SIGABRT), no other signal than an injected SIGKILL.
fn assert_no_crash(out: &Output, what: &str) {
    assert_ne!(out.status.code(), Some(101), "{what} panicked:\n{}", text(out));
    assert_ne!(out.status.signal(), Some(libc_sigabrt()), "{what} aborted:\n{}", text(out));
}

fn libc_sigabrt() -> i32 {
    6
}

/// A refused input: exit code 1 and a message naming `file`.
fn assert_refused(out: &Output, file: &Path, what: &str) -> String {
    assert_no_crash(out, what);
    assert_eq!(out.status.code(), Some(1), "{what} was not refused:\n{}", text(out));
    let t = text(out);
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    assert!(t.contains(name), "{what}: the message does not name {name}:\n{t}");
    t
}

/// A run folder whose stage 1 has committed epoch 1 of 2, the same run carried on to epoch 2
/// without faults (the reference), and the arguments that carry it on.
struct Resumable {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    template: PathBuf,
    reference: PathBuf,
    root: PathBuf,
}

impl Resumable {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let data = synth(tmp.path(), 16, 8);
        let template = tmp.path().join("template");
        let out = run("aue-stage1", &strs(&stage_args(&data, &template, 1)), &[]);
        assert!(out.status.success(), "{}", text(&out));
        let reference = tmp.path().join("reference");
        copy_tree(&template, &reference);
        let out = run("aue-stage1", &strs(&Self::resume_args(&data, &reference)), &[]);
        assert!(out.status.success(), "{}", text(&out));
        let root = tmp.path().to_owned();
        Self { _tmp: tmp, data, template, reference, root }
    }

    fn resume_args(data: &Path, run_dir: &Path) -> Vec<String> {
        let mut a = stage_args(data, run_dir, 2);
        a.push("--resume".into());
        a
    }

    /// A fresh copy of the template.
    fn copy(&self, name: &str) -> PathBuf {
        let dir = self.root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        copy_tree(&self.template, &dir);
        dir
    }

    /// Checks that `run_dir` is consistent after a fault, then resumes it to the end and checks
    /// that the result is the uninterrupted run's, bit for bit.
    fn check_recovers(&self, run_dir: &Path, what: &str) {
        let stage = run_dir.join("stage1");
        let commit = Commit::read(&stage.join("commit.json"))
            .unwrap_or_else(|e| panic!("{what}: commit.json unreadable: {e}"))
            .unwrap_or_else(|| panic!("{what}: the committed epoch 1 was lost"));
        for f in commit.files() {
            assert!(stage.join(f).is_file(), "{what}: commit.json names a missing {f}");
        }
        assert!(commit.epoch >= 1, "{what}");
        for f in ["best.safetensors", "last.safetensors"] {
            let m = meta(&stage.join(f));
            assert!(m["epoch"].parse::<usize>().unwrap() >= 1, "{what}: {f}");
        }
        let out = run("aue-stage1", &strs(&Self::resume_args(&self.data, run_dir)), &[]);
        assert!(out.status.success(), "{what}: --resume failed:\n{}", text(&out));
        let want = self.reference.join("stage1");
        for f in ["last.safetensors", "best.safetensors"] {
            assert_eq!(tensors(&stage.join(f)), tensors(&want.join(f)), "{what}: {f} differs");
        }
        assert_eq!(
            metrics(&stage.join("metrics.jsonl")),
            metrics(&want.join("metrics.jsonl")),
            "{what}: metrics differ"
        );
    }
}

/// Runs `args` with the N-th file operation failing as `kind` says, for N = 1, 2, ... until a
/// run finishes without reaching N; `check` sees each failed run. Returns how many points.
fn walk_fault_points(
    kind: &str,
    mut prepare: impl FnMut(usize) -> (PathBuf, Vec<String>),
    mut check: impl FnMut(usize, &Output, &Path),
) -> usize {
    for n in 1..200 {
        let (run_dir, args) = prepare(n);
        let at = n.to_string();
        let out = run("aue-stage1", &strs(&args), &[("AUE_FAULT_AT", &at), ("AUE_FAULT", kind)]);
        if out.status.success() {
            eprintln!("{kind}: {} fault points in the run", n - 1);
            return n - 1;
        }
        check(n, &out, &run_dir);
    }
    panic!("a run never finished under fault injection");
}

#[test]
fn a_kill_at_any_file_operation_loses_at_most_the_running_epoch() {
    let r = Resumable::new();
    let points = walk_fault_points(
        "kill",
        |n| {
            let dir = r.copy(&format!("kill-{n}"));
            let args = Resumable::resume_args(&r.data, &dir);
            (dir, args)
        },
        |n, out, dir| {
            assert_eq!(out.status.signal(), Some(9), "point {n}: not killed:\n{}", text(out));
            r.check_recovers(dir, &format!("SIGKILL at file operation {n}"));
            let _ = std::fs::remove_dir_all(dir);
        },
    );
    // config.json, metrics, the epoch's model and optimizer, the commit, the links, removals.
    assert!(points >= 10, "only {points} fault points in an epoch");
}

#[test]
fn a_full_disk_at_any_write_fails_cleanly_and_loses_nothing() {
    let r = Resumable::new();
    walk_fault_points(
        "enospc",
        |n| {
            let dir = r.copy(&format!("enospc-{n}"));
            let args = Resumable::resume_args(&r.data, &dir);
            (dir, args)
        },
        |n, out, dir| {
            assert_no_crash(out, "a run on a full disk");
            assert_eq!(out.status.code(), Some(1), "point {n}:\n{}", text(out));
            let t = text(out);
            assert!(t.contains("No space left on device"), "point {n}: {t}");
            assert!(t.contains(&dir.display().to_string()), "point {n}: no file named: {t}");
            r.check_recovers(dir, &format!("ENOSPC at file operation {n}"));
            let _ = std::fs::remove_dir_all(dir);
        },
    );
}

#[test]
fn overwrite_keeps_the_old_run_until_the_new_one_commits() {
    let r = Resumable::new();
    let before = snapshot(&r.template.join("stage1"));
    let old_best = before[Path::new("best.safetensors")].clone();
    walk_fault_points(
        "kill",
        |n| {
            let dir = r.copy(&format!("overwrite-{n}"));
            let mut args = stage_args(&r.data, &dir, 1);
            args.extend(["--overwrite".into(), "--lr".into(), "0.02".into()]);
            (dir, args)
        },
        |n, out, dir| {
            assert_eq!(out.status.signal(), Some(9), "point {n}: not killed:\n{}", text(out));
            let stage = dir.join("stage1");
            let config = std::fs::read_to_string(stage.join("config.json")).unwrap_or_default();
            let replaced_committed = config.contains("\"lr\": 0.02")
                && Commit::read(&stage.join("commit.json")).ok().flatten().is_some();
            if !replaced_committed {
                // The old run is where it was, or set aside whole in replaced/.
                let files = snapshot(&stage);
                let kept = [
                    "best.safetensors",
                    "replaced/best.safetensors",
                    "replaced.tmp/best.safetensors",
                ]
                .iter()
                .any(|f| files.get(Path::new(f)) == Some(&old_best));
                assert!(kept, "point {n}: the old run's best.safetensors is gone");
                // Any later start puts an interrupted set-aside back first.
                let out = run("aue-stage1", &strs(&Resumable::resume_args(&r.data, dir)), &[]);
                assert!(out.status.success(), "point {n}: no recovery:\n{}", text(&out));
            }
            let _ = std::fs::remove_dir_all(dir);
        },
    );
}

#[test]
fn checkpoints_without_a_commit_point_are_never_deleted() {
    let r = Resumable::new();
    // A run folder of an older aue: best and last, no commit.json.
    let dir = r.copy("old-layout");
    let stage = dir.join("stage1");
    for f in std::fs::read_dir(&stage).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if name == "commit.json" || name.starts_with("epoch-") {
            std::fs::remove_file(f.path()).unwrap();
        }
    }
    let before = snapshot(&stage);
    let out = run("aue-stage1", &strs(&Resumable::resume_args(&r.data, &dir)), &[]);
    let t = assert_refused(&out, &stage, "--resume of a folder without commit.json");
    assert!(t.contains("commit.json") && t.contains("--overwrite"), "{t}");
    assert_eq!(snapshot(&stage), before, "the folder changed");
    // --overwrite killed right after its first file operation keeps them too.
    let mut args = stage_args(&r.data, &dir, 1);
    args.push("--overwrite".into());
    let out = run("aue-stage1", &strs(&args), &[("AUE_FAULT_AT", "2")]);
    assert_eq!(out.status.signal(), Some(9), "{}", text(&out));
    let files = snapshot(&stage);
    let old_best = &before[Path::new("best.safetensors")];
    assert!(
        ["best.safetensors", "replaced/best.safetensors", "replaced.tmp/best.safetensors"]
            .iter()
            .any(|f| files.get(Path::new(f)) == Some(old_best)),
        "the old best.safetensors is gone"
    );
}

/// A committed stage-1 run and stage 2 on it, for the bad-input cases.
fn two_stages(tmp: &Path) -> (PathBuf, PathBuf) {
    let data = synth(tmp, 16, 8);
    let run_dir = tmp.join("run");
    for n in 1..=2 {
        let out = run(&format!("aue-stage{n}"), &strs(&stage_args(&data, &run_dir, 1)), &[]);
        assert!(out.status.success(), "{}", text(&out));
    }
    (data, run_dir)
}

/// Rewrites a checkpoint with `edit` applied to its tensors and metadata.
fn forge(
    from: &Path,
    to: &Path,
    edit: impl FnOnce(&mut BTreeMap<String, candle_core::Tensor>, &mut BTreeMap<String, String>),
) {
    let (mut m, mut t) =
        aue_contract::format::read_safetensors(from, &candle_core::Device::Cpu).unwrap();
    edit(&mut t, &mut m);
    aue_contract::format::write_safetensors(to, &t, &m).unwrap();
}

#[test]
fn bad_checkpoints_are_refused_by_every_binary_and_overwrite_changes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, run_dir) = two_stages(tmp.path());
    let best1 = run_dir.join("stage1/best.safetensors");
    let stage2 = run_dir.join("stage2");
    let before = snapshot(&stage2);

    // One NaN in a convolution.
    let nan = tmp.path().join("nan.safetensors");
    forge(&best1, &nan, |t, _| {
        let w = &t["backbone.conv1.weight"];
        let mut v = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        v[3] = f32::NAN;
        t.insert(
            "backbone.conv1.weight".into(),
            candle_core::Tensor::new(v, &candle_core::Device::Cpu)
                .unwrap()
                .reshape(w.dims())
                .unwrap(),
        );
    });
    // Metadata that claims another model than the tensors hold.
    let claims = tmp.path().join("claims-resnet50.safetensors");
    forge(&best1, &claims, |_, m| {
        m.insert("preset".into(), "resnet50".into());
    });
    // Not a safetensors file at all, and an empty one.
    let junk = tmp.path().join("junk.safetensors");
    std::fs::write(&junk, b"\xff\xff\xff\xff\xff\xff\xff\x7fnot json").unwrap();
    let empty = tmp.path().join("empty.safetensors");
    std::fs::write(&empty, b"").unwrap();

    let mut args2 = stage_args(&data, &run_dir, 1);
    args2.push("--overwrite".into());
    for (file, why) in [
        (&nan, "non-finite"),
        (&claims, "resnet50"),
        (&junk, "safetensors"),
        (&empty, "safetensors"),
    ] {
        let mut a = args2.clone();
        a.extend(["--resume-model".into(), file.display().to_string()]);
        let t = assert_refused(&run("aue-stage2", &strs(&a), &[]), file, "stage 2");
        assert!(t.contains(why), "{t}");
        assert_eq!(snapshot(&stage2), before, "stage 2's run changed after refusing {file:?}");

        let pred = tmp.path().join("p.csv");
        let face = tmp.path().join("synth/basic/Image/original/test_0001.jpg");
        let out = run(
            "aue-predict",
            &[
                "--checkpoint",
                file.to_str().unwrap(),
                face.to_str().unwrap(),
                "--out",
                pred.to_str().unwrap(),
            ],
            &[],
        );
        assert_refused(&out, file, "aue-predict");
        let out = run("aue-report", &["--checkpoint", file.to_str().unwrap(), "--no-files"], &[]);
        assert_refused(&out, file, "aue-report --checkpoint");
    }
    assert!(
        text(&run(
            "aue-stage2",
            &strs(
                &[args2.clone(), vec!["--resume-model".into(), nan.display().to_string()]].concat()
            ),
            &[]
        ))
        .contains("backbone.conv1.weight"),
        "the NaN's tensor is named"
    );
}

/// A PyTorch `torch.save` zip archive whose `data.pkl` (pickle protocol 2, as PyTorch writes
/// it) declares `conv1.weight` with `shape` and `stride` over a storage of `numel` floats of
/// which the archive holds `bytes` bytes.
fn hostile_pth(path: &Path, shape: [u64; 2], stride: [u64; 2], numel: u64, bytes: usize) {
    use std::io::Write;
    fn unicode(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend((s.len() as u32).to_le_bytes());
        p.extend(s.as_bytes());
    }
    fn long(p: &mut Vec<u8>, v: u64) {
        if v < 1 << 31 {
            // BININT, as PyTorch writes small ints.
            p.push(b'J');
            p.extend((v as u32).to_le_bytes());
        } else {
            // LONG1: little-endian two's complement.
            p.extend([0x8a, 9]);
            p.extend(v.to_le_bytes());
            p.push(0);
        }
    }
    let mut p = vec![0x80, 2, b'}']; // PROTO 2, EMPTY_DICT
    unicode(&mut p, "conv1.weight");
    p.extend(b"ctorch._utils\n_rebuild_tensor_v2\n(");
    p.push(b'(');
    unicode(&mut p, "storage");
    p.extend(b"ctorch\nFloatStorage\n");
    unicode(&mut p, "0");
    unicode(&mut p, "cpu");
    long(&mut p, numel);
    p.extend(b"tQ"); // TUPLE, BINPERSID
    p.extend([b'K', 0]); // offset 0
    p.push(b'(');
    for d in shape {
        long(&mut p, d);
    }
    p.push(b't');
    p.push(b'(');
    for s in stride {
        long(&mut p, s);
    }
    p.push(b't');
    p.push(0x89); // False
    p.extend(b"ccollections\nOrderedDict\n)Rt"); // OrderedDict(), TUPLE
    p.extend(b"Rs."); // REDUCE, SETITEM, STOP
    let f = std::fs::File::create(path).unwrap();
    let mut z = zip::ZipWriter::new(f);
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    z.start_file("archive/data.pkl", opts).unwrap();
    z.write_all(&p).unwrap();
    z.start_file("archive/data/0", opts).unwrap();
    z.write_all(&vec![0u8; bytes]).unwrap();
    z.finish().unwrap();
}

#[test]
fn hostile_pickles_are_errors_not_aborts() {
    let tmp = tempfile::tempdir().unwrap();
    let data = synth(tmp.path(), 16, 8);
    let cases = [
        ("huge-shape.pth", [100_000, 100_000], [100_000, 1], 16, 64),
        ("huge-storage.pth", [1_000_000, 1_000_000], [1_000_000, 1], 1_000_000_000_000, 64),
        ("overflow.pth", [u64::MAX / 2, 4], [4, 1], 16, 64),
    ];
    for (name, shape, stride, numel, bytes) in cases {
        let path = tmp.path().join(name);
        hostile_pth(&path, shape, stride, numel, bytes);
        let run_dir = tmp.path().join(format!("run-{name}"));
        let mut a = stage_args(&data, &run_dir, 1);
        a.extend(["--pretrained".into(), path.display().to_string()]);
        let t = assert_refused(&run("aue-stage1", &strs(&a), &[]), &path, name);
        // A shape that does not fit the reader's integers is skipped: then no tensor is left.
        assert!(
            t.contains("conv1.weight") && t.contains("bytes") || t.contains("holds no tensors"),
            "{name}: {t}"
        );
        assert!(!run_dir.join("stage1/commit.json").exists(), "{name}: a run started");
    }
    // A well-formed pickle that holds no tensors says so.
    let path = tmp.path().join("no-tensors.pth");
    {
        use std::io::Write;
        let f = std::fs::File::create(&path).unwrap();
        let mut z = zip::ZipWriter::new(f);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        z.start_file("archive/data.pkl", opts).unwrap();
        z.write_all(&[0x80, 2, b'}', b'.']).unwrap();
        z.finish().unwrap();
    }
    let mut a = stage_args(&data, &tmp.path().join("run-empty"), 1);
    a.extend(["--pretrained".into(), path.display().to_string()]);
    let t = assert_refused(&run("aue-stage1", &strs(&a), &[]), &path, "an empty pickle");
    assert!(t.contains("holds no tensors"), "{t}");
}

#[test]
fn hostile_images_and_folders_give_rows_not_crashes() {
    let tmp = tempfile::tempdir().unwrap();
    let (_, run_dir) = two_stages(tmp.path());
    let ck = run_dir.join("stage2/best.safetensors");
    let dir = tmp.path().join("photos");
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let face = tmp.path().join("synth/basic/Image/original/test_0001.jpg");
    std::fs::copy(&face, dir.join("face.jpg")).unwrap();
    let bytes = std::fs::read(&face).unwrap();
    std::fs::write(dir.join("truncated.jpg"), &bytes[..bytes.len() / 3]).unwrap();
    std::fs::write(dir.join("empty.png"), b"").unwrap();
    // A PNG header claiming 100000 x 100000 pixels.
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
    png.extend(100_000u32.to_be_bytes());
    png.extend(100_000u32.to_be_bytes());
    png.extend([8, 2, 0, 0, 0, 0, 0, 0, 0]);
    std::fs::write(dir.join("huge.png"), png).unwrap();
    // Two symbolic-link loops.
    std::os::unix::fs::symlink(&dir, dir.join("sub/loop")).unwrap();
    std::os::unix::fs::symlink(dir.join("sub"), dir.join("sub/again")).unwrap();
    let out_csv = tmp.path().join("p.csv");
    let out = run(
        "aue-predict",
        &[
            "--checkpoint",
            ck.to_str().unwrap(),
            dir.to_str().unwrap(),
            "--out",
            out_csv.to_str().unwrap(),
        ],
        &[],
    );
    assert_no_crash(&out, "aue-predict on hostile images");
    let csv = std::fs::read_to_string(&out_csv).unwrap_or_default();
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    // The face, and one error row per broken file; the loops add nothing.
    for name in ["truncated.jpg", "empty.png", "huge.png"] {
        assert!(
            rows.iter().any(|r| r.contains(name) && r.contains("error")),
            "{name} has no error row:\n{csv}"
        );
    }
    let face_rows = rows.iter().filter(|r| r.contains("photos/face.jpg")).count();
    assert_eq!(face_rows, 1, "{csv}");
    let mut names: Vec<&str> = rows.iter().filter_map(|r| r.split(',').next()).collect();
    let total = names.len();
    names.dedup();
    assert_eq!(names.len(), total, "a file was read twice:\n{csv}");
}
