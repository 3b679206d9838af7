"""How this sample was made (kept for provenance; the demo reads the committed files).

    python samples/eval_demo/make_sample.py ../shared/data samples/eval_demo

- vqa_rad/: every question on 8 VQA-RAD train images that the seed sample does not use
  (images 41-48 in file order), generic form (image, question, answer, answer_type, qid).
- food101/: the first 8 images of each of the three Food-101 classes, generic form
  (image, label).
Images downscaled (longest side 224 px, JPEG), which changes nothing for the tiny models.
"""

import json
import sys
from pathlib import Path

from PIL import Image

MAX_SIDE = 224


def copy_image(source: Path, target: Path) -> None:
    if target.exists():
        return
    with Image.open(source) as picture:
        picture.thumbnail((MAX_SIDE, MAX_SIDE))
        picture = picture if picture.mode in ("L", "RGB") else picture.convert("RGB")
        picture.save(target, quality=90)


def vqa_rad(source: Path, out: Path) -> None:
    rows = [json.loads(line) for line in (source / "data.jsonl").read_text().splitlines()]
    images: list[str] = []
    for row in rows:
        if row["image"] not in images:
            images.append(row["image"])
    chosen = set(images[40:48])
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        if row["image"] in chosen:
            name = f"images/{Path(row['image']).stem}.jpg"
            copy_image(source / row["image"], out / name)
            lines.append(
                {
                    "image": name,
                    "question": row["question"],
                    "answer": str(row["answer"]),
                    "answer_type": row["answer_type"],
                    "qid": row["qid"],
                }
            )
    (out / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def food101(source: Path, out: Path, per_class: int = 8) -> None:
    rows = [json.loads(line) for line in (source / "data.jsonl").read_text().splitlines()]
    taken: dict[str, int] = {}
    (out / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        if taken.get(row["label"], 0) >= per_class:
            continue
        taken[row["label"]] = taken.get(row["label"], 0) + 1
        name = f"images/{Path(row['image']).name}"
        copy_image(source / row["image"], out / name)
        lines.append({"image": name, "label": row["label"]})
    (out / "data.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


if __name__ == "__main__":
    shared, target = Path(sys.argv[1]), Path(sys.argv[2])
    vqa_rad(shared / "vqa_rad_train", target / "vqa_rad")
    food101(shared / "food101_mini", target / "food101")
