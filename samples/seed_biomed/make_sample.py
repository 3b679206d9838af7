"""How this sample was made (kept for provenance; the demo reads the committed files).

    python samples/seed_biomed/make_sample.py ../shared/data/vqa_rad_train samples/seed_biomed
"""

import json
import shutil
import sys
from pathlib import Path

ORGAN = {"CHEST": "chest", "HEAD": "head", "ABD": "abdomen"}
TASK = {"PRES": "presence", "POS": "position", "ABN": "abnormality", "SIZE": "size", "OTHER": "other",
        "ATTRIB": "attribute", "MODALITY": "modality", "COLOR": "color", "ORGAN": "organ", "PLANE": "plane",
        "COUNT": "count"}


def main(source: Path, out: Path, images: int = 30) -> None:
    rows = [json.loads(line) for line in (source / "data.jsonl").read_text().splitlines()]
    chosen: list[str] = []
    for row in rows:
        if row["image"] not in chosen and len(chosen) < images:
            chosen.append(row["image"])
    (out / "images").mkdir(parents=True, exist_ok=True)
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
        flan.append({"id": identifier, "image": image, "conversations": [
            {"from": "human", "value": row["question"]}, {"from": "gpt", "value": answer}]})
        captions.append({"id": identifier, "image": image, "conversations": [
            {"from": "human", "value": "<image>\nPlease depict the image in words."},
            {"from": "gpt", "value": f"A radiology image of the {organ} from a clinical teaching case."}]})
        instructs.append({"id": identifier, "image": image, "conversations": [
            {"from": "human", "value": f"<image>\n{row['question']}"},
            {"from": "gpt", "value": f"This is a radiology image of the {organ}. Reading the image for the "
                                     f"question asked, the answer is {answer}."}]})
    for name, records in (("vision_flan", flan), ("allava_caption", captions), ("allava_instruct", instructs)):
        (out / f"{name}.json").write_text(json.dumps(records, indent=1) + "\n")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
