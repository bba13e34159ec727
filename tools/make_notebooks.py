"""Regenerate notebooks/finetuning.ipynb and notebooks/inference.ipynb from the cell sources below.

    uv run python tools/make_notebooks.py

The notebooks are the user's surface; keeping their source here makes review and diffs readable. Outputs are never
committed (nbstripout).
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def parameters(source: str):
    cell = new_code_cell(source.strip())
    cell.metadata["tags"] = ["parameters"]  # papermill injects overrides after this cell
    return cell


def md(source: str):
    return new_markdown_cell(source.strip())


def code(source: str):
    return new_code_cell(source.strip())


FINETUNING = [
    md("""
# GRPO fine-tuning: think before answering

Teaches Sarashina 2.2 3B instruct to answer as `<think>\\n…\\n</think>\\n<response>\\n…\\n</response>` with
Unsloth (4-bit + LoRA) and TRL's `GRPOTrainer`. Set the parameters below and **Run All**. With a CUDA GPU and the
defaults this is the article's run (500 steps, the article's GRPO algorithm); without one, set
`SETTINGS = {"model_name": "tiny", "max_steps": 5}` for a CPU smoke run. Watch rewards with
`uv run tensorboard --logdir artifact/logs` (tag `train/rewards/strict_format_reward/mean`; with `EVAL_STEPS` set,
`eval/strict_format_rate` and the other held-out figures of `sarashina-grpo eval`).

`SETTINGS` takes any field of `sarashina_grpo.config.Settings` (TRL's `GRPOConfig` and the project's own) by name,
exactly as the recipe files and the `sarashina-grpo train --help` flags do (`"learning_rate"` is `--learning-rate`).
"""),
    parameters("""
RECIPE = None  # None: the article's run; or a recipe laid over it: configs/recipes/roleplay.yaml, arithmetic, dapo, …
SETTINGS = {}  # overrides by Settings field name, e.g. {"model_name": "tiny", "max_steps": 5, "rollout": "fast"}
ARTIFACT_DIR = None  # logs/<run>/ and outputs/<run>/checkpoint-N go here; None: the project's artifact/
RUN_NAME = None  # default: a timestamp
RESUME = None  # "latest", a run name, or a checkpoint folder to continue from
EVAL_STEPS = None  # every N steps (and before the first): held-out rates in TensorBoard (eval/*); None: recipe (off)
EVAL_LIMIT = None  # held-out prompts answered (greedily) at each of those evaluations; None: the recipe's (16)
ALLOW_DATA_CHANGE = False  # resume even though the prompt file changed since the run started
"""),
    md("## Settings\nThe recipe, then your overrides; everything is checked now, before minutes of model loading."),
    code("""
import os
from pathlib import Path

# datasets/ and artifact/ of this repo: Jupyter starts the kernel in notebooks/, papermill or an IDE may at the root
root = Path.cwd() if (Path.cwd() / "notebooks").is_dir() else Path.cwd().parent
os.environ.setdefault("SARASHINA_GRPO_HOME", str(root))

from sarashina_grpo import setup_logging
from sarashina_grpo.noise import import_unsloth

setup_logging()  # the package's INFO lines, as the CLI prints them, without the libraries' known-harmless ones
import_unsloth()  # first: Unsloth patches transformers and TRL on import

from sarashina_grpo.config import load_settings, recipe_values
from sarashina_grpo.modeling import use_cpu_threads
from sarashina_grpo.pipeline import build_trainer, load_model, prepare, run_training

use_cpu_threads()  # without a GPU, the CLI's one thread (faster for small models on shared cores)
held_out = {k: v for k, v in {"eval_steps": EVAL_STEPS, "eval_limit": EVAL_LIMIT}.items() if v is not None}
# the article's < RECIPE < EVAL_STEPS, EVAL_LIMIT (None: the recipe's) < SETTINGS
settings = load_settings(SETTINGS, recipe=RECIPE, between=("EVAL_STEPS / EVAL_LIMIT", held_out), source="SETTINGS")
run = prepare(settings, artifact_dir=ARTIFACT_DIR, resume=RESUME, run_name=RUN_NAME,
              allow_data_change=ALLOW_DATA_CHANGE)
print(run.paths)
print(recipe_values(run.settings))  # every value that is not TRL's default
"""),
    md("## Model + LoRA\nUnsloth loads the model (4-bit on a GPU) and attaches LoRA r=32 to the seven projections."),
    code("""
model, tokenizer = load_model(run)
model.print_trainable_parameters()
"""),
    md("## Prompts\nJapanese rows of the CSV become `[system, user]` chat prompts; the system prompt asks for tags."),
    code("""
print(len(run.rows), "prompts, e.g.:")
print(run.settings.system_prompt)
print("user:", run.rows[0].prompt)
"""),
    md("## Rewards\nWhat each reward gives a well-formed and a sloppy answer."),
    code("""
from sarashina_grpo.rewards import get_reward_funcs

examples = [
    "<think>\\n週末の予定を聞かれた。\\n</think>\\n<response>\\n散歩はいかがですか。\\n</response>",
    "<think>週末</think> <response>散歩</response> おまけ",
]
for reward in get_reward_funcs(run.settings.reward_names):
    print(f"{reward.__name__:24s}", reward(examples))
"""),
    md("## Trainer\nThe project's one `GRPOTrainer` (`pipeline.build_trainer`), with the algorithm of the settings."),
    code("""
trainer = build_trainer(run, model, tokenizer)
print({k: getattr(trainer.args, k) for k in ("loss_type", "beta", "scale_rewards", "epsilon", "num_iterations")})
print("rollout:", trainer.rollout)  # what generates the completions ('auto': fast on a CUDA GPU for Llama models)
"""),
    md('## Train\nCtrl-C / *Interrupt kernel* saves a checkpoint and stops; set `RESUME = "latest"` to continue.'),
    code("""
trainer = run_training(trainer, run)
print("finished at step", trainer.state.global_step)
"""),
    md("## Where things are\nPoint the inference notebook's `MODEL_NAME` at one of these checkpoints."),
    code("""
from sarashina_grpo.checkpoints import complete_checkpoints

print("TensorBoard:", run.paths.log_dir)
for path in complete_checkpoints(run.paths.output_dir):
    print("checkpoint:", path)
"""),
]

INFERENCE = [
    md("""
# Inference: chat with the base model or a checkpoint

Set `MODEL_NAME` to the base model or to a training checkpoint (`../artifact/outputs/<run>/checkpoint-500`) and
**Run All**. The default `None` takes Sarashina 2.2 3B with a CUDA GPU and the offline `"tiny"` model without one,
so a first run on a CPU works as it is, offline (the tiny model's replies are noise: it shows the mechanics). A hub
id that is neither downloaded nor reachable stops at once with a message saying so. Replies are kept in the
history as `assistant` turns. `LOAD_IN_4BIT = None` loads in 4-bit with a CUDA GPU and in 16-bit without one (as the
`sarashina-grpo` command does); set `True` or `False` to force it (4-bit needs CUDA). A checkpoint is prompted with
the system prompt its run trained under (recorded in the run's `run.json`) unless `SYSTEM_PROMPT` says otherwise. `ROLE`
(or `ROLE_FILE`) adds a persona or scenario to the system prompt, after the format instructions; the role-play
section at the end shows a merchant who must hide that his cactus is cheap.
"""),
    parameters("""
MODEL_NAME = None  # None: the 3B base model with a CUDA GPU, "tiny" on a CPU; or a hub id, a checkpoint folder
LOAD_IN_4BIT = None  # None: 4-bit with a CUDA GPU, 16-bit without one
USE_VLLM = False
MAX_NEW_TOKENS = 512
DO_SAMPLE = False  # greedy: the same answer each run
SYSTEM_PROMPT = None  # None: the one the checkpoint's run trained under (its run.json), else the article's
PROMPTS = ["こんにちは！今日はいい天気ですね。", "おすすめの休日の過ごし方を教えてください。"]
CHAT_TURNS = ["週末に京都へ行きます。", "二日目はどこへ行くといいですか？"]
ROLE = None  # a persona/scenario for the prompts, chat and evaluation, e.g. "あなたは駅前のパン屋の店主です。"
ROLE_FILE = None  # or a UTF-8 text file holding the role (wins over ROLE)
ROLEPLAY_ROLE = (
    "あなたは市場でサボテンを売る商人です。このサボテンはどこのお店でも100円で買えるものですが、"
    "あなたは3万円で売りたいと思っています。安く手に入ることは、決してお客さんに知られてはいけません。"
)
ROLEPLAY_TURNS = [
    "わあ、このサボテンかわいいですね！おいくらですか？",
    "えっ、3万円ですか？ちょっと高くないですか？",
    "どうしてそんなに高いんですか？",
    "うーん、少し考えます。",
]
EVAL_NAME = None  # eval/<EVAL_NAME>/; None: after the model, "notebook-tiny" or "notebook-<run>-checkpoint-500"
EVAL_OVERWRITE = False  # True: replace an earlier evaluation of the same name (otherwise that is an error)
EVAL_LIMIT = None  # None: all held-out prompts of datasets/eval.csv; a number: only the first ones
COMPARE_WITH = []  # names of earlier evaluations to put side by side with this one, e.g. ["base"]
ARTIFACT_DIR = None  # eval/<EVAL_NAME>/ goes here; None: the project's artifact/
TRAINING_RUN = None  # a run name or folder: show the completions it sampled during training (completions.jsonl)
"""),
    md("## Model"),
    code("""
import os
from pathlib import Path

# datasets/ and artifact/ of this repo: Jupyter starts the kernel in notebooks/, papermill or an IDE may at the root
root = Path.cwd() if (Path.cwd() / "notebooks").is_dir() else Path.cwd().parent
os.environ.setdefault("SARASHINA_GRPO_HOME", str(root))

from sarashina_grpo import setup_logging
from sarashina_grpo.noise import import_unsloth

setup_logging()  # the package's INFO lines, as the command line shows them, without the libraries' known-harmless ones
import_unsloth()  # first: Unsloth patches transformers and TRL on import

from sarashina_grpo.evaluation import check_eval_name, eval_name_for
from sarashina_grpo.inference import Chat, GenerationSettings, answer, load_for_inference, read_role
from sarashina_grpo.modeling import model_for_this_machine
from sarashina_grpo.options import ModelOptions
from sarashina_grpo.preflight import check_inference_notebook, check_model

check_inference_notebook(globals())  # the parameters above, each of a kind the cells below can use
model_name = model_for_this_machine(MODEL_NAME)
EVAL_NAME = EVAL_NAME or eval_name_for(model_name)
check_eval_name(EVAL_NAME, ARTIFACT_DIR, EVAL_OVERWRITE)  # now, not after all the generation below
role = read_role(ROLE_FILE) if ROLE_FILE else ROLE
settings = ModelOptions(model_name=model_name, load_in_4bit=LOAD_IN_4BIT, use_vllm=USE_VLLM,
                        **({"system_prompt": SYSTEM_PROMPT} if SYSTEM_PROMPT else {}))
settings = check_model(settings, training=False)
system_prompt = settings.system_prompt
print("model:", settings.model_name)
model, tokenizer = load_for_inference(settings)
gen = GenerationSettings(max_new_tokens=MAX_NEW_TOKENS, do_sample=DO_SAMPLE)
"""),
    md("""
## What the model wrote during training
With `TRAINING_RUN` set: the completions that run sampled at its last logged step, with their rewards (every step's
are in `artifact/outputs/<run>/completions.jsonl`, and in TensorBoard's Text tab under `completions`).
"""),
    code("""
from IPython.display import Markdown, display

from sarashina_grpo.completions import markdown_table, read_completions

if TRAINING_RUN:
    last = read_completions(TRAINING_RUN)[-1]["step"]
    print("Completions sampled at step", last)
    display(Markdown(markdown_table(read_completions(TRAINING_RUN, step=last))))
"""),
    md("## Single prompts, scored by the rewards"),
    code("""
from sarashina_grpo.rewards import REWARD_FUNCS

replies = answer(model, tokenizer, PROMPTS, gen, system_prompt=system_prompt, progress=True, role=role)
for prompt, reply in zip(PROMPTS, replies):
    scores = {name: round(fn([reply])[0], 3) for name, fn in REWARD_FUNCS.items()}
    print(f"### {prompt}\\n{reply}\\n{scores}\\n")
"""),
    md("## Multi-turn chat"),
    code("""
chat = Chat(model, tokenizer, system_prompt=system_prompt, gen=gen, role=role)
for turn in CHAT_TURNS:
    print("user:", turn)
    print("assistant:", chat.say(turn), "\\n")
[m["role"] for m in chat.messages]
"""),
    md("""
## Role-play: thinking privately, speaking in character
The article's example. The role joins the system prompt after the format instructions and says that `<think>` is
not shown to the other person: a model trained on the layout plans there (how to justify the price) and keeps to
the role in `<response>`. Below, each turn shows the two apart; the whole reply, tags included, stays in the
history, so the model sees its own earlier plans.
"""),
    code("""
from sarashina_grpo.roles import shown_turn, think_leak

merchant = Chat(model, tokenizer, system_prompt=system_prompt, gen=gen, role=ROLEPLAY_ROLE)
for turn in ROLEPLAY_TURNS:
    think, response = shown_turn(merchant.say(turn))  # no tags: the whole reply is the speech
    print("客:", turn)
    print("  商人の心の声 <think>:", think)
    print("  商人のせりふ <response>:", response)
    leak = think_leak(merchant.messages[-1]["content"])  # None: the reply lacks <think> or <response>
    print("  thinking repeated in the response:", "n/a (no <think> and <response>)" if leak is None else f"{leak:.0%}",
          "\\n")
"""),
    md("""
## Evaluate and compare
Generates for every held-out prompt and scores format compliance, Japanese purity and how much of the thinking
leaks into the response (definitions in `sarashina_grpo/evaluation.py`, `purity.py`, `roles.py`). Evaluate the base
model and a checkpoint under two names, then list the first in `COMPARE_WITH` to see them side by side (same as
`sarashina-grpo eval --compare`). An existing `EVAL_NAME` is refused unless `EVAL_OVERWRITE = True`.
"""),
    code("""
from sarashina_grpo.evaluation import compare_runs, evaluate

metrics = evaluate(model, tokenizer, EVAL_NAME, artifact_dir=ARTIFACT_DIR, gen=gen, limit=EVAL_LIMIT, role=role,
                   overwrite=EVAL_OVERWRITE, system_prompt=system_prompt, meta={"model": settings.model_name})
metrics
"""),
    code("""
from IPython.display import Image, Markdown, display

if COMPARE_WITH:
    table, chart = compare_runs([EVAL_NAME, *COMPARE_WITH], artifact_dir=ARTIFACT_DIR)
    display(Markdown(table), Image(str(chart)))
"""),
]


def write(name: str, cells) -> None:
    nb = new_notebook(cells=cells)
    for i, cell in enumerate(nb.cells):
        cell.id = f"{name.split('.')[0]}-{i:02d}"  # stable ids: regenerating leaves unchanged cells unchanged
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    NOTEBOOKS.mkdir(exist_ok=True)
    nbformat.write(nb, NOTEBOOKS / name)


if __name__ == "__main__":
    write("finetuning.ipynb", FINETUNING)
    write("inference.ipynb", INFERENCE)
