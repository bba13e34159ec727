"""Write the Japanese arithmetic word problems with exact answers: a training set and a held-out set.

    uv run python scripts/make_arithmetic.py            # rewrites datasets/arithmetic.csv and arithmetic_eval.csv

Seeded: the same seed writes the same bytes (tests/test_arithmetic.py checks the committed files against it).
Problems cover shopping, change, time, distance and speed, percentages, areas and temperatures, with integer and
simple decimal (at most two places) answers. Every answer is computed with ``fractions.Fraction``, so it is exact;
a drawn problem whose answer would not be a short decimal is drawn again. Prompts are unique across both files:
the held-out set shares templates with the training set but never a problem.
"""

from __future__ import annotations

import argparse
import csv
import random
from collections.abc import Callable
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SEED = 20250101
TRAIN_ROWS, EVAL_ROWS = 320, 100
MAX_PLACES = 2  # "simple decimals": answers like 12.5 or 3.14, never 0.3333…

GOODS = ["りんご", "みかん", "ノート", "えんぴつ", "消しゴム", "パン", "おにぎり", "ジュース", "牛乳", "たまご",
         "ケーキ", "シャツ", "靴下", "クッキー", "ボールペン", "バナナ", "コーヒー", "チョコレート"]
COUNTERS = {"りんご": "個", "みかん": "個", "ノート": "冊", "えんぴつ": "本", "消しゴム": "個", "パン": "個",
            "おにぎり": "個", "ジュース": "本", "牛乳": "本", "たまご": "パック", "ケーキ": "個", "シャツ": "枚",
            "靴下": "足", "クッキー": "箱", "ボールペン": "本", "バナナ": "房", "コーヒー": "杯", "チョコレート": "枚"}
MEATS = ["豚肉", "鶏肉", "牛肉", "ひき肉"]
PEOPLE = ["クラス", "部活", "会社の部署", "町内会", "サークル"]
ACTIVITIES = ["ピアノの練習", "ジョギング", "読書", "英語の勉強", "散歩", "筋トレ"]
VEHICLES = [("自転車", 12, 18), ("車", 30, 80), ("電車", 60, 120), ("バス", 20, 40)]
Problem = tuple[str, Fraction]


def yen(amount: int) -> str:
    """Prices as Japanese shops print them: 1,280円."""
    return f"{amount:,}円"


def dec(value: Fraction | int | float) -> str:
    """A short exact decimal as written in a problem or the answer column: 12, 2.5, 3.14 (never 1E+3)."""
    value = Fraction(value)
    if value.denominator == 1:
        return str(value.numerator)
    text = format(Decimal(value.numerator) / Decimal(value.denominator), "f")
    return text.rstrip("0").rstrip(".")


def price(rng: random.Random, low: int, high: int, step: int = 10) -> int:
    return rng.randrange(low, high + 1, step)


def shopping(rng: random.Random) -> Problem:
    item, other = rng.sample(GOODS, 2)
    p, n = price(rng, 50, 480), rng.randint(2, 12)
    kind = rng.randrange(4)
    if kind == 0:
        return (f"{item}を1{COUNTERS[item]}{yen(p)}で{n}{COUNTERS[item]}買いました。代金は全部で何円ですか？",
                Fraction(p * n))
    if kind == 1:
        q, m = price(rng, 80, 1500), rng.randint(1, 5)
        return (f"{item}を1{COUNTERS[item]}{yen(p)}で{n}{COUNTERS[item]}と、{other}を1{COUNTERS[other]}{yen(q)}で"
                f"{m}{COUNTERS[other]}買いました。合計は何円ですか？", Fraction(p * n + q * m))
    if kind == 2:
        return (f"{n}{COUNTERS[item]}で{yen(p * n)}の{item}があります。1{COUNTERS[item]}あたり何円ですか？",
                Fraction(p))
    meat, per100, grams = rng.choice(MEATS), price(rng, 98, 498, 2), rng.choice(range(150, 801, 50))
    return f"100gあたり{yen(per100)}の{meat}を{grams}g買いました。代金は何円ですか？", Fraction(per100 * grams, 100)


def change(rng: random.Random) -> Problem:
    item, other = rng.sample(GOODS, 2)
    kind = rng.randrange(3)
    if kind == 0:
        p = price(rng, 120, 9800)
        bill = next(b for b in (1000, 5000, 10000) if b >= p)
        return f"{yen(p)}の{item}を買って、{yen(bill)}札で払いました。おつりは何円ですか？", Fraction(bill - p)
    if kind == 1:
        p, n = price(rng, 60, 380), rng.randint(2, 9)
        paid = next(b for b in (1000, 2000, 3000, 5000, 10000) if b >= p * n)
        return (f"{item}を1{COUNTERS[item]}{yen(p)}で{n}{COUNTERS[item]}買い、{yen(paid)}払いました。"
                "おつりはいくらですか？（単位：円）", Fraction(paid - p * n))
    p, q = price(rng, 100, 2000), price(rng, 100, 2000)
    wallet = price(rng, p + q + 10, p + q + 5000)
    return (f"財布に{yen(wallet)}入っていました。{yen(p)}の{item}と{yen(q)}の{other}を買うと、残りは何円ですか？",
            Fraction(wallet - p - q))


def time_problem(rng: random.Random) -> Problem:
    kind = rng.randrange(4)
    if kind == 0:
        h, m = rng.randint(1, 4), rng.randrange(5, 60, 5)
        return f"{h}時間{m}分は全部で何分ですか？", Fraction(h * 60 + m)
    if kind == 1:
        a, b, c = rng.randint(5, 45), rng.randint(3, 30), rng.randint(2, 20)
        return (f"通勤に電車で{a}分、バスで{b}分、歩いて{c}分かかります。通勤には合計何分かかりますか？",
                Fraction(a + b + c))
    if kind == 2:
        minutes, days = rng.choice([10, 15, 20, 25, 30, 40, 45, 50]), rng.randint(3, 30)
        return (f"毎日{minutes}分ずつ{rng.choice(ACTIVITIES)}をします。{days}日間では合計何時間になりますか？",
                Fraction(minutes * days, 60))
    start = rng.randint(6 * 60, 18 * 60)
    length = rng.randint(15, 300)
    h1, m1, h2, m2 = *divmod(start, 60), *divmod(start + length, 60)
    return (f"{h1}時{m1:02d}分に家を出て、{h2}時{m2:02d}分に目的地に着きました。かかった時間は何分ですか？",
            Fraction(length))


def distance(rng: random.Random) -> Problem:
    vehicle, low, high = rng.choice(VEHICLES)
    kind = rng.randrange(4)
    if kind == 0:
        speed, hours = rng.randint(low, high), Fraction(rng.choice([1, 2, 3, 4, 5, 6])) / 2
        return f"{vehicle}が時速{speed}kmで{dec(hours)}時間走ると、何km進みますか？", speed * hours
    if kind == 1:
        speed, minutes = rng.randrange(50, 101, 5), rng.randint(8, 45)
        return f"分速{speed}mで{minutes}分歩くと、何m進みますか？", Fraction(speed * minutes)
    if kind == 2:
        speed, hours = rng.randint(low, high), Fraction(rng.choice([1, 2, 3, 4, 5, 6, 8])) / 4
        return (f"{dec(speed * hours)}kmの道のりを{vehicle}で時速{speed}kmで進むと、何時間かかりますか？",
                Fraction(hours))
    lap, laps = rng.choice([200, 250, 300, 400]), rng.randint(3, 15)
    return f"1周{lap}mのトラックを{laps}周走りました。走った距離は何kmですか？", Fraction(lap * laps, 1000)


def percentage(rng: random.Random) -> Problem:
    item = rng.choice(GOODS)
    kind = rng.randrange(4)
    if kind == 0:
        p, off = price(rng, 500, 12000, 100), rng.choice([5, 10, 15, 20, 25, 30, 40, 50])
        return f"{yen(p)}の{item}が{off}%引きで売られています。値段は何円ですか？", Fraction(p * (100 - off), 100)
    if kind == 1:
        n = rng.choice([20, 25, 30, 32, 35, 40, 50])
        k = rng.randint(1, n - 1)
        return (f"{n}人の{rng.choice(PEOPLE)}のうち{k}人が自転車で通っています。自転車で通っている人は全体の"
                "何%ですか？", Fraction(k * 100, n))
    if kind == 2:
        p, tax = price(rng, 100, 9000, 50), rng.choice([8, 10])
        return (f"税抜き{yen(p)}の{item}に{tax}%の消費税がかかると、税込み価格は何円ですか？",
                Fraction(p * (100 + tax), 100))
    p = price(rng, 1000, 8000, 100)
    paid = p * (100 - rng.choice([10, 20, 25, 30, 40])) // 100
    return f"定価{yen(p)}の{item}を{yen(paid)}で買いました。定価の何%引きでしたか？", Fraction((p - paid) * 100, p)


def area(rng: random.Random) -> Problem:
    kind = rng.randrange(4)
    half = lambda low, high: Fraction(rng.randint(2 * low, 2 * high), 2)  # noqa: E731  (whole or .5)
    if kind == 0:
        a, b = half(2, 30), half(2, 30)
        return f"縦{dec(a)}cm、横{dec(b)}cmの長方形の面積は何平方センチメートルですか？", a * b
    if kind == 1:
        base, height = Fraction(rng.randint(2, 40)), Fraction(rng.randint(2, 30))
        return f"底辺{dec(base)}cm、高さ{dec(height)}cmの三角形の面積は何平方センチメートルですか？", base * height / 2
    if kind == 2:
        side = half(1, 20)
        return f"1辺{dec(side)}mの正方形の花だんの面積は何平方メートルですか？", side * side
    radius = rng.randint(1, 12)
    return (f"半径{radius}cmの円の面積は何平方センチメートルですか？円周率は3.14として計算してください。",
            Fraction(314, 100) * radius * radius)


def temperature(rng: random.Random) -> Problem:
    morning, drop = rng.randint(-5, 15), rng.randint(3, 20)
    if rng.random() < 0.5:
        return (f"朝の気温は{morning}度でした。夜には{drop}度下がりました。夜の気温は何度ですか？",
                Fraction(morning - drop))
    low = morning - drop
    return f"ある日の最高気温は{morning}度、最低気温は{low}度でした。気温の差は何度ですか？", Fraction(drop)


CATEGORIES: list[Callable[[random.Random], Problem]] = [shopping, change, time_problem, distance, percentage, area,
                                                        temperature]


def is_short_decimal(value: Fraction) -> bool:
    return (value * 10**MAX_PLACES).denominator == 1


def make_problems(count: int, seed: int = SEED) -> list[tuple[str, str]]:
    """``count`` unique (prompt, answer) pairs, categories taken in turn, in a seeded order."""
    rng = random.Random(seed)
    seen, problems = set(), []
    while len(problems) < count:
        prompt, answer = CATEGORIES[len(problems) % len(CATEGORIES)](rng)
        if prompt in seen or not is_short_decimal(answer):
            continue
        seen.add(prompt)
        problems.append((prompt, dec(answer)))
    rng.shuffle(problems)
    return problems


def write_csv(path: Path, problems: list[tuple[str, str]]) -> None:
    with path.open("w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["prompt", "lang", "answer"])
        writer.writerows((prompt, "ja", answer) for prompt, answer in problems)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "datasets")
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--train", type=int, default=TRAIN_ROWS, help="rows of arithmetic.csv")
    parser.add_argument("--eval", type=int, default=EVAL_ROWS, help="rows of arithmetic_eval.csv (held out)")
    args = parser.parse_args(argv)
    problems = make_problems(args.train + args.eval, args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    write_csv(args.out_dir / "arithmetic.csv", problems[:args.train])
    write_csv(args.out_dir / "arithmetic_eval.csv", problems[args.train:])
    print(f"wrote {args.train} + {args.eval} problems to {args.out_dir}")


if __name__ == "__main__":
    main()
