use std::path::PathBuf;

use serde_json::json;

use super::*;
use crate::api::kerneljob::{CaseSpec, Lang, RankingBy};
use crate::kerneljob::submission::eval_config;

/// kernelbot's `examples/identity_py/task.yml`, as it is.
const IDENTITY_PY: &str = r#"# name: identity-py

files:
  - {"name": "submission.py", "source": "@SUBMISSION@"}
  - {"name": "task.py", "source": "task.py"}
  - {"name": "utils.py", "source": "../utils.py"}
  - {"name": "reference.py", "source": "reference.py"}
  - {"name": "eval.py", "source": "../eval.py"}

lang: "py"

description:
  A simple test task - python

config:
  main: "eval.py"

templates:
  Python: "../template.py"

# small test cases. should be cheap to run.
tests:
  - {"size": 127, "seed": 4242}
  - {"size": 128, "seed": 5236}

benchmarks:
  - {"size": 1024, "seed": 54352}
  - {"size": 2048, "seed": 93246}

ranking_by: "geom"
"#;

/// kernelbot's `examples/identity_cuda/task.yml`, as it is (cases shortened).
const IDENTITY_CUDA: &str = r#"# name of the task
# name: identity-cuda

# these files will be baked into the json object, so that they are available during testing
files:
  - {"name": "eval.cu", "source": "../eval.cu"}
  - {"name": "task.h", "source": "task.h"}
  - {"name": "utils.h", "source": "../utils.h"}
  - {"name": "reference.cuh", "source": "reference.cuh"}
  - {"name": "submission.cu", "source": "@SUBMISSION@"}

# task language, depending on this we do get different keys in runner
lang: "cu"

description:
  A simple test task

# Config object
config:
  # task provided source files to compile
  sources: ["eval.cu", "submission.cu"]

  # additional include directories
  include_dirs: []

templates:
  CUDA: "../template.cu"

# small test cases. should be cheap to run.
tests:
  - {"size": 127, "seed": 4242}

benchmarks:
  - {"size": 1024, "seed": 54352}
"#;

/// A kernelbot `examples/` tree in a fresh temporary directory: shared files at the top,
/// one task directory `name` holding `task.yml` and its own files.
struct Tree {
    root: PathBuf,
}

impl Tree {
    fn new(task: &str, yaml: &str, files: &[(&str, &str)]) -> Self {
        let root = std::env::temp_dir().join(format!("benchkite-cli-task-{}", rand::random::<u64>()));
        std::fs::create_dir_all(root.join(task)).unwrap();
        std::fs::write(root.join(task).join("task.yml"), yaml).unwrap();
        for (path, content) in files {
            let p = root.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, content).unwrap();
        }
        Self { root }
    }

    fn task(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    fn submission(&self, content: &str) -> PathBuf {
        let p = self.root.join("my-submission.txt");
        std::fs::write(&p, content).unwrap();
        p
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn py_tree() -> Tree {
    Tree::new(
        "identity_py",
        IDENTITY_PY,
        &[
            ("eval.py", "# eval\n"),
            ("utils.py", "# utils\n"),
            ("template.py", "# template\n"),
            ("identity_py/task.py", "# task\n"),
            ("identity_py/reference.py", "# reference\n"),
        ],
    )
}

fn err_text(r: Result<Task>) -> String {
    format!("{:#}", r.expect_err("must fail"))
}

#[test]
fn kernelbots_py_example_maps_like_build_task_config() {
    let tree = py_tree();
    let sub = tree.submission("def custom_kernel(x): return x\n");
    let task = load(&tree.task("identity_py"), &sub, Mode::Leaderboard).unwrap();
    let spec = &task.spec;
    assert_eq!(task.path, tree.task("identity_py").join("task.yml"));
    assert_eq!(spec.lang, Lang::Py);
    assert_eq!(spec.mode, Mode::Leaderboard);
    assert_eq!(spec.main.as_deref(), Some("eval.py"));
    assert_eq!(spec.ranking_by, Some(RankingBy::Geom));
    assert!(spec.pool.is_none() && spec.queue.is_none(), "the target is the caller's");
    // Every file by its `name`, relative sources read from the task dir, @SUBMISSION@ the file.
    let names: Vec<&str> = spec.sources.keys().map(String::as_str).collect();
    assert_eq!(names, ["eval.py", "reference.py", "submission.py", "task.py", "utils.py"]);
    assert_eq!(spec.sources["submission.py"], "def custom_kernel(x): return x\n");
    assert_eq!(spec.sources["utils.py"], "# utils\n");
    assert_eq!(spec.sources["task.py"], "# task\n");
    // Cases as kernelbot's lines, in the order task.yml wrote the keys (size before seed).
    assert_eq!(
        spec.tests,
        vec![CaseSpec::Line("size: 127; seed: 4242".into()), CaseSpec::Line("size: 128; seed: 5236".into())]
    );
    assert_eq!(spec.benchmarks.len(), 2);

    // What the runner gets is what kernelbot's build_task_config sends for this task.
    let cfg = serde_json::to_value(eval_config(spec, spec.sources.clone(), None).unwrap()).unwrap();
    assert_eq!(cfg["lang"], "py");
    assert_eq!(cfg["mode"], "leaderboard");
    assert_eq!(cfg["main"], "eval.py");
    assert_eq!(cfg["ranking_by"], "geom");
    assert_eq!(cfg["tests"], json!([{"size": 127, "seed": 4242}, {"size": 128, "seed": 5236}]));
    assert_eq!(cfg["benchmarks"][1], json!({"size": 2048, "seed": 93246}));
    assert_eq!(cfg["test_timeout"], 180);
    assert_eq!(cfg["seed"], serde_json::Value::Null);
    assert_eq!(cfg["multi_gpu"], false);
    assert_eq!(cfg["sources"]["eval.py"], "# eval\n");
}

#[test]
fn kernelbots_cu_example_splits_sources_and_headers() {
    let tree = Tree::new(
        "identity_cuda",
        IDENTITY_CUDA,
        &[
            ("eval.cu", "// eval\n"),
            ("utils.h", "// utils\n"),
            ("identity_cuda/task.h", "// task\n"),
            ("identity_cuda/reference.cuh", "// ref\n"),
        ],
    );
    let sub = tree.submission("// kernel\n");
    let spec = load(&tree.task("identity_cuda"), &sub, Mode::Test).unwrap().spec;
    assert_eq!(spec.lang, Lang::Cu);
    assert_eq!(spec.main, None);
    assert_eq!(spec.sources.keys().collect::<Vec<_>>(), ["eval.cu", "submission.cu"]);
    assert_eq!(spec.sources["submission.cu"], "// kernel\n");
    assert_eq!(spec.headers.keys().collect::<Vec<_>>(), ["reference.cuh", "task.h", "utils.h"]);
    assert!(spec.include_dirs.is_empty());
    // kernelbot's default ranking.
    assert_eq!(spec.ranking_by, Some(RankingBy::Last));
    let cfg = serde_json::to_value(eval_config(&spec, spec.sources.clone(), None).unwrap()).unwrap();
    assert_eq!(cfg["headers"]["task.h"], "// task\n");
    assert_eq!(cfg["ranking_by"], "last");
    assert_eq!(cfg["tests"], json!([{"size": 127, "seed": 4242}]));
}

#[test]
fn cu_config_fields_timeouts_seed_and_multi_gpu_map() {
    let yaml = r#"
files:
  - {name: k.cu, source: "@SUBMISSION@"}
  - {name: main.cu, source: main.cu}
lang: cu
config: {sources: [main.cu, k.cu], include_dirs: [tk/include], defines: {N: 4, MODE: fast}, compile_flags: ["-O3"]}
libraries: [cublas]
multi_gpu: true
tests: [{world_size: 2, seed: 5}]
benchmarks: [{seed: 10, world_size: 4}]
test_timeout: 1.5
benchmark_timeout: 90
ranked_timeout: 300
seed: 42
"#;
    let tree = Tree::new("t", yaml, &[("t/main.cu", "// main\n")]);
    let spec = load(&tree.task("t"), &tree.submission("//k\n"), Mode::Benchmark).unwrap().spec;
    assert_eq!(spec.include_dirs, ["tk/include"]);
    assert_eq!(spec.compile_flags, ["-O3"]);
    assert_eq!(spec.defines.get("N").map(String::as_str), Some("4"));
    assert_eq!(spec.libraries, ["cublas"]);
    assert!(spec.multi_gpu);
    assert_eq!(spec.test_timeout_seconds, Some(1.5));
    assert_eq!(spec.benchmark_timeout_seconds, Some(90.0));
    assert_eq!(spec.ranked_timeout_seconds, Some(300.0));
    assert_eq!(spec.seed, Some(42));
    assert_eq!(spec.benchmarks, vec![CaseSpec::Line("seed: 10; world_size: 4".into())]);
    assert!(spec.headers.is_empty());
}

#[test]
fn a_case_the_line_format_cannot_carry_stays_a_map() {
    let yaml = r#"
files: [{name: s.py, source: "@SUBMISSION@"}]
lang: py
config: {main: s.py}
tests: [{size: 7, name: "a; b"}]
"#;
    let tree = Tree::new("t", yaml, &[]);
    let spec = load(&tree.task("t"), &tree.submission(""), Mode::Test).unwrap().spec;
    match &spec.tests[0] {
        CaseSpec::Params(m) => assert_eq!(m["name"], "a; b"),
        other => panic!("expected a map: {other:?}"),
    }
}

#[test]
fn a_task_yml_path_works_like_its_directory() {
    let tree = py_tree();
    let sub = tree.submission("x");
    let a = load(&tree.task("identity_py"), &sub, Mode::Test).unwrap();
    let b = load(&tree.task("identity_py").join("task.yml"), &sub, Mode::Test).unwrap();
    assert_eq!(a.spec, b.spec);
}

#[test]
fn missing_files_are_named() {
    let tree = py_tree();
    std::fs::remove_file(tree.root.join("utils.py")).unwrap();
    let e = err_text(load(&tree.task("identity_py"), &tree.submission("x"), Mode::Test));
    assert!(e.contains("files[2] (utils.py): reading ../utils.py"), "{e}");
    assert!(e.contains("identity_py/task.yml"), "{e}");

    let tree = py_tree();
    let e = err_text(load(&tree.task("identity_py"), &tree.root.join("nope.py"), Mode::Test));
    assert!(e.contains("reading the submission") && e.contains("nope.py"), "{e}");

    let e = err_text(load(&tree.root.join("no-such-task"), &tree.submission("x"), Mode::Test));
    assert!(e.contains("reading the task file") && e.contains("no-such-task"), "{e}");
}

#[test]
fn bad_task_files_get_clear_errors() {
    let cases: &[(&str, &str)] = &[
        ("files: [\n  - {name: a", "not valid YAML"),
        ("- a\n- b\n", "must be a mapping"),
        (
            "files: [{name: s.py, source: task.yml}]\nlang: py\nconfig: {main: s.py}\n",
            "no files: entry has source @SUBMISSION@",
        ),
        ("files: [{name: s.py, source: \"@SUBMISSION@\"}]\nconfig: {main: s.py}\n", "lang is missing"),
        ("files: [{name: s.py, source: \"@SUBMISSION@\"}]\nlang: rust\nconfig: {main: s.py}\n", "lang must be"),
        (
            "files: [{name: s.py, source: \"@SUBMISSION@\"}]\nlang: py\nconfig: {main: eval.py}\n",
            "config.main is \"eval.py\"",
        ),
        ("files: [{name: s.py, source: \"@SUBMISSION@\"}]\nlang: py\n", "config is missing"),
        ("files: [{source: \"@SUBMISSION@\"}]\nlang: py\nconfig: {main: s.py}\n", "files[0] has no name"),
        ("files: {s.py: x}\nlang: py\nconfig: {main: s.py}\n", "files must be a list"),
        (
            "files: [{name: s.py, source: \"@SUBMISSION@\"}]\nlang: py\nconfig: {main: s.py}\nbenchmark: []\n",
            "unknown key \"benchmark\"",
        ),
        (
            "files: [{name: s.py, source: \"@SUBMISSION@\"}]\nlang: py\nconfig: {main: s.py}\ntests: [3]\n",
            "tests[0] must be a mapping",
        ),
        (
            "files: [{name: s.py, source: \"@SUBMISSION@\"}]\nlang: py\nconfig: {main: s.py}\nranking_by: best\n",
            "ranking_by must be last, mean or geom",
        ),
        (
            "files: [{name: s.py, source: \"@SUBMISSION@\"}]\nlang: py\nconfig: {main: s.py}\ntest_timeout: soon\n",
            "test_timeout must be a positive number",
        ),
        (
            "files: [{name: s.py, source: \"@SUBMISSION@\"}]\nlang: py\nconfig: {main: s.py}\nmulti_gpu: true\ntests: [{seed: 1}]\n",
            "multi-gpu tests[0] (seed: 1) does not specify world_size",
        ),
        (
            "files: [{name: k.cu, source: \"@SUBMISSION@\"}]\nlang: cu\nconfig: {sources: [main.cu]}\n",
            "config.sources names \"main.cu\"",
        ),
        ("files: [{name: k.cu, source: \"@SUBMISSION@\"}]\nlang: cu\nconfig: {main: k.cu}\n", "not String(\"main\")"),
    ];
    for (yaml, want) in cases {
        let tree = Tree::new("t", yaml, &[]);
        let e = err_text(load(&tree.task("t"), &tree.submission("x"), Mode::Test));
        assert!(e.contains(want), "{yaml:?}: {e:?} lacks {want:?}");
    }
}

#[test]
fn a_submission_that_is_not_text_is_refused() {
    let tree = py_tree();
    let sub = tree.root.join("bin.py");
    std::fs::write(&sub, [0xff, 0xfe, 0x00]).unwrap();
    let e = err_text(load(&tree.task("identity_py"), &sub, Mode::Test));
    assert!(e.contains("is not UTF-8 text"), "{e}");
}

#[test]
fn the_repository_task_in_kernelbots_layout_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tasks/kernelbot_layout/identity_py");
    let task = load(&dir, &dir.join("wrong.py"), Mode::Test).unwrap();
    let spec = task.spec;
    assert_eq!(spec.sources.keys().collect::<Vec<_>>(), ["eval.py", "reference.py", "submission.py", "task.py"]);
    let eval = std::fs::read_to_string(dir.join("../../identity_py/eval.py")).unwrap();
    assert_eq!(spec.sources["eval.py"], eval, "the shared harness, named relative to the task directory");
    assert!(spec.sources["submission.py"].contains("x + 1.0"), "the submission is the file given");
    assert_eq!(
        spec.tests,
        vec![CaseSpec::Line("size: 64; seed: 4242".into()), CaseSpec::Line("size: 256; seed: 5236".into())]
    );
    assert_eq!(spec.test_timeout_seconds, Some(60.0));
    assert_eq!(spec.ranking_by, Some(RankingBy::Geom));
}
