"""How this sample was made (kept for provenance; the demo reads the committed files).

    python samples/seed_biomed/make_sample.py ../shared/data samples/seed_biomed samples/biomed_pairs

Two parts, written in Vision-Flan / ALLaVA-Caption-VFLAN / ALLaVA-Instruct-VFLAN formats:
- VQA-RAD: the first 30 train images with all their clinician questions and answers (real);
  captions and informative answers are our templates.
- MedPix 2.0: every pair whose case is not in the demo sample (`biomed_pairs`), with its real
  caption; questions on its real modality, plane and body-system fields, informative answers
  templated from those fields and the caption's first sentence. Images are downscaled (longest side 224 px, JPEG).
"""

import json
import random
import re
import shutil
import sys
from pathlib import Path

from PIL import Image

ORGAN = {"CHEST": "chest", "HEAD": "head", "ABD": "abdomen"}
TASK = {
    "PRES": "presence",
    "POS": "position",
    "ABN": "abnormality",
    "SIZE": "size",
    "OTHER": "other",
    "ATTRIB": "attribute",
    "MODALITY": "modality",
    "COLOR": "color",
    "ORGAN": "organ",
    "PLANE": "plane",
    "COUNT": "count",
}
CAPTION_PROMPT = "<image>\nPlease depict the image in words."
MEDPIX_QUESTIONS = {
    "modality": [
        "What imaging modality was used for this image?",
        "Which modality is this image from?",
        "How was this image acquired?",
    ],
    "plane": [
        "In which plane is this image taken?",
        "What is the imaging plane of this image?",
        "Which plane is shown?",
    ],
    "location": [
        "Which body system does this image show?",
        "What part of the body is imaged here?",
        "Which organ system is the focus of this image?",
    ],
}
MAX_SIDE = 224


def record(identifier: str, image: str, human: str, gpt: str) -> dict:
    return {
        "id": identifier,
        "image": image,
        "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": gpt}],
    }


def vqa_rad(source: Path, out: Path, images: int = 30) -> tuple[list, list, list]:
    rows = [json.loads(line) for line in (source / "data.jsonl").read_text().splitlines()]
    chosen: list[str] = []
    for row in rows:
        if row["image"] not in chosen and len(chosen) < images:
            chosen.append(row["image"])
    flan, captions, instructs = [], [], []
    for row in rows:
        if row["image"] not in chosen:
            continue
        organ = ORGAN.get(row["organ"], row["organ"].lower())
        task = "vqa_rad_" + TASK.get(row["question_type"].split(",")[0], "other")
        identifier = f"{task}+vqa_rad+{row['qid']}"
        image = f"images/{Path(row['image']).name}"
        if not (out / image).exists():
            shutil.copy(source / row["image"], out / image)
        answer = str(row["answer"]).strip()
        flan.append(record(identifier, image, row["question"], answer))
        captions.append(
            record(
                identifier,
                image,
                CAPTION_PROMPT,
                f"A radiology image of the {organ} from a clinical teaching case.",
            )
        )
        instructs.append(
            record(
                identifier,
                image,
                f"<image>\n{row['question']}",
                f"This is a radiology image of the {organ}. Reading the image for the "
                f"question asked, the answer is {answer}.",
            )
        )
    return flan, captions, instructs


def first_sentence(text: str) -> str:
    sentence = re.split(r"(?<=[a-z)])\.\s", text, maxsplit=1)[0].rstrip(".")
    return sentence + "."


def medpix(source: Path, out: Path, held_out: Path) -> tuple[list, list, list]:
    demo_cases = {
        json.loads(line)["case_id"] for line in (held_out / "data.jsonl").read_text().splitlines()
    }
    rows = [json.loads(line) for line in (source / "data.jsonl").read_text().splitlines()]
    rng = random.Random(0)
    flan, captions, instructs = [], [], []
    for row in rows:
        if row["case_id"] in demo_cases:
            continue
        name = Path(row["image"]).stem
        image = f"images/medpix_{name}.jpg"
        if not (out / image).exists():
            with Image.open(source / row["image"]) as picture:
                picture.thumbnail((MAX_SIDE, MAX_SIDE))
                picture = picture if picture.mode in ("L", "RGB") else picture.convert("RGB")
                picture.save(out / image, quality=90)
        caption = " ".join(row["caption"].split())
        fields = {"modality": row["modality"], "plane": row["plane"], "location": row["location"]}
        for kind, answer in fields.items():
            if kind == "plane" and answer.startswith("NOS"):
                continue
            question = rng.choice(MEDPIX_QUESTIONS[kind])
            identifier = f"medpix_{kind}+medpix+{name}"
            informative = (
                f"The image is a {fields['modality']} study of the {fields['location'].lower()} "
                f"region, viewed in the {fields['plane'].lower()} plane. {first_sentence(caption)} "
                f"So the {kind.replace('location', 'body system')} is {answer}."
            )
            flan.append(record(identifier, image, question, answer))
            captions.append(record(identifier, image, CAPTION_PROMPT, caption))
            instructs.append(record(identifier, image, f"<image>\n{question}", informative))
    return flan, captions, instructs


def main(shared_data: Path, out: Path, held_out: Path) -> None:
    (out / "images").mkdir(parents=True, exist_ok=True)
    parts = [
        vqa_rad(shared_data / "vqa_rad_train", out),
        medpix(shared_data / "medpix_captions", out, held_out),
    ]
    for index, name in enumerate(("vision_flan", "allava_caption", "allava_instruct")):
        records = [r for part in parts for r in part[index]]
        (out / f"{name}.json").write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]))
