"""Benchmark adapters: each release format written small to tmp_path, the generic form on the
shared samples, and malformed files that must name their file, line and field."""

import csv
import io
import json
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from adamllm_core.evaluation.adapters import BENCHMARKS, RECIPE1M_QUESTION, _key, read_items
from adamllm_core.evaluation.benchmarks import BENCHMARKS as REGISTRY
from adamllm_core.evaluation.classes import CLRS, FOOD101, FOODSEG103, UC_MERCED
from adamllm_core.evaluation.items import BenchmarkFormatError, EvalItem


def png(seed: int, size: int = 4) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (seed * 37 % 256, seed * 91 % 256, seed * 13 % 256)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


def put(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        path.write_text(data, encoding="utf-8")
    else:
        path.write_bytes(data)
    return path


def jsonl(path: Path, rows: list[Any]) -> Path:
    return put(path, "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))


def read(benchmark: str, path: Path | str, **kwargs: Any) -> list[EvalItem]:
    return list(read_items(benchmark, str(path), **kwargs))


def fails(
    benchmark: str,
    path: Path | str,
    *,
    line: int | None,
    field: str | None,
    unit: str | None = None,
) -> BenchmarkFormatError:
    with pytest.raises(BenchmarkFormatError) as caught:
        read(benchmark, path)
    error = caught.value
    assert (error.line, error.field) == (line, field), str(error)
    message = str(error)
    assert error.file in message and Path(error.file).name in message
    if line is not None:  # 1-based lines of text files, 0-based rows of JSON documents and Parquet
        unit = unit or ("row" if error.file.endswith((".json", ".parquet")) else "line")
        assert f"{unit} {line}" in message
    if field is not None:
        assert repr(field) in message
    return error


# -- class lists ------------------------------------------------------------------------------


def test_class_lists() -> None:
    assert len(FOOD101) == 101 == len(set(FOOD101))
    underscored = [n.replace(" ", "_") for n in FOOD101]
    assert underscored == sorted(underscored)  # the ClassLabel order
    assert FOOD101.index("cheese plate") < FOOD101.index("cheesecake")
    assert all("_" not in n for n in FOOD101)
    assert sorted(FOODSEG103) == list(range(1, 103))
    assert FOODSEG103[2] == "egg tart" and FOODSEG103[96] == "French beans"
    assert (
        "background" not in FOODSEG103.values() and "other ingredients" not in FOODSEG103.values()
    )
    assert len(UC_MERCED) == 21 and len(CLRS) == 25
    for names in (FOOD101, tuple(FOODSEG103.values()), UC_MERCED, CLRS):
        assert len({_key(n) for n in names}) == len(names)  # matching keys never collide
    for name in (
        "baseball diamond",
        "dense residential",
        "golf course",
        "mobile home park",
        "parking lot",
        "sparse residential",
        "storage tanks",
        "tennis court",
        "medium residential",
    ):
        assert name in UC_MERCED


def test_unknown_benchmark_lists_the_valid_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError) as caught:
        read_items("vqarad", str(tmp_path))
    for name in BENCHMARKS:
        assert name in str(caught.value)
    assert (
        sum(spec.paper for spec in REGISTRY.values()) == 12
    )  # the paper's (the proving ground's is not)


# -- generic form on the shared samples -------------------------------------------------------


def test_generic_vqa_rad_sample(shared_data: Path) -> None:
    root = shared_data / "vqa_rad_train"
    items = read("vqa_rad", root)
    assert len(items) == 1152
    assert Counter(i.answer_type for i in items) == {"CLOSED": 703, "OPEN": 449}
    assert len({i.qid for i in items}) == 1152
    first = items[0]
    assert (first.qid, first.question, first.answer) == (
        "4",
        "What type of imaging does this not represent?",
        "ultrasound",
    )
    assert first.image == (root / "images" / "synpic28602.jpg").read_bytes()
    assert first.metadata == {"split": "train", "question_type": "MODALITY", "organ": "CHEST"}
    assert first.source == f"{root / 'data.jsonl'}:1"
    assert first.choices is None
    # The same file given directly, with a limit.
    assert [i.qid for i in read("vqa_rad", root / "data.jsonl", limit=3)] == [
        i.qid for i in items[:3]
    ]
    assert read("vqa_rad", root, limit=0) == []


def test_generic_food101_sample(shared_data: Path) -> None:
    root = shared_data / "food101_mini"
    items = read("food101", root)
    assert len(items) == 90
    assert {i.answer for i in items} == {"macaroni and cheese", "paella", "waffles"}
    assert all(i.choices == list(FOOD101) for i in items)
    assert items[0].image == (root / "images" / "macaroni_and_cheese__1244126.jpg").read_bytes()
    assert [i.qid for i in items[:2]] == ["0", "1"]  # no qid column: the row index
    assert items[0].question == "" and items[0].answer_type is None


# -- release forms ----------------------------------------------------------------------------


def test_slake_release_keeps_english(tmp_path: Path) -> None:
    put(tmp_path / "imgs" / "xmlab0" / "source.jpg", png(1))
    put(tmp_path / "imgs" / "xmlab1" / "source.jpg", png(2))
    rows = [
        {
            "img_id": 0,
            "img_name": "xmlab0/source.jpg",
            "question": "What modality is used to take this image?",
            "answer": "MRI",
            "q_lang": "en",
            "location": "Abdomen",
            "answer_type": "OPEN",
            "qid": 9835,
        },
        {
            "img_id": 0,
            "img_name": "xmlab0/source.jpg",
            "question": "这是什么成像方式?",
            "answer": "核磁共振",
            "q_lang": "zh",
            "answer_type": "OPEN",
            "qid": 9836,
        },
        {
            "img_id": 1,
            "img_name": "xmlab1/source.jpg",
            "question": "Is this a normal image?",
            "answer": "No",
            "q_lang": "en",
            "answer_type": "CLOSED",
            "qid": 9837,
        },
        {
            "img_id": 1,
            "img_name": "xmlab1/source.jpg",
            "question": "How many lungs?",
            "answer": 2,
            "q_lang": "en",
            "answer_type": "OPEN",
            "qid": 9838,
        },
    ]
    put(tmp_path / "test.json", json.dumps(rows, ensure_ascii=False))
    put(tmp_path / "train.json", "[]")
    items = read("slake", tmp_path)
    assert [(i.qid, i.answer, i.answer_type) for i in items] == [
        ("9835", "MRI", "OPEN"),
        ("9837", "No", "CLOSED"),
        ("9838", "2", "OPEN"),
    ]
    assert items[0].question == "What modality is used to take this image?"
    assert items[0].image == png(1) and items[1].image == png(2)
    assert items[0].metadata["location"] == "Abdomen" and items[0].metadata["q_lang"] == "en"
    assert items[1].source.endswith("test.json#row2")  # the entry index in the JSON list


def _hf_image(data: bytes, name: str) -> dict[str, Any]:
    return {"bytes": data, "path": name}


def test_pathvqa_hf_parquet_picks_test_and_derives_answer_type(tmp_path: Path) -> None:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", image_type), ("question", pa.string()), ("answer", pa.string())])

    def write(name: str, rows: list[tuple[bytes, str, str]]) -> None:
        table = pa.Table.from_pylist(
            [{"image": _hf_image(d, "x.jpg"), "question": q, "answer": a} for d, q, a in rows],
            schema=schema,
        )
        (tmp_path / "data").mkdir(exist_ok=True)
        pq.write_table(table, tmp_path / "data" / name)

    write("train-00000-of-00001.parquet", [(png(9), "train question?", "yes")])
    write(
        "test-00000-of-00001.parquet",
        [
            (png(1), "Is this malignant?", "yes"),
            (png(2), "What organ?", "liver"),
            (png(3), "Is it normal?", "No"),
        ],
    )
    items = read("pathvqa", tmp_path)
    assert [(i.qid, i.answer, i.answer_type) for i in items] == [
        ("0", "yes", "CLOSED"),
        ("1", "liver", "OPEN"),
        ("2", "No", "CLOSED"),
    ]
    assert [i.image for i in items] == [png(1), png(2), png(3)]
    assert all(i.metadata == {"answer_type_derived": True} for i in items)
    assert items[1].source.endswith("test-00000-of-00001.parquet#row1")


def test_vqa_rad_official_json_selects_test_rows(tmp_path: Path) -> None:
    put(tmp_path / "images" / "synpic1.jpg", png(1))
    put(tmp_path / "synpic2.jpg", png(2))  # beside the JSON also works
    rows = [
        {
            "qid": 1,
            "image_name": "synpic1.jpg",
            "question": "Is there a fracture?",
            "answer": "no",
            "answer_type": "CLOSED",
            "phrase_type": "freeform",
            "question_type": "PRES",
        },
        {
            "qid": 2,
            "image_name": "synpic1.jpg",
            "question": "Is there a mass?",
            "answer": "yes",
            "answer_type": "closed ",
            "phrase_type": "test_freeform",
            "question_type": "PRES",
        },
        {
            "qid": 3,
            "image_name": "synpic2.jpg",
            "question": "How many kidneys?",
            "answer": 2,
            "answer_type": "OPEN",
            "phrase_type": "test_para",
            "question_type": "COUNT",
        },
    ]
    put(tmp_path / "VQA_RAD Dataset Public.json", json.dumps(rows))
    items = read("vqa_rad", tmp_path)
    assert [(i.qid, i.answer, i.answer_type) for i in items] == [
        ("2", "yes", "CLOSED"),
        ("3", "2", "OPEN"),
    ]
    assert items[0].image == png(1) and items[1].image == png(2)
    assert items[1].metadata["question_type"] == "COUNT"


def test_pmc_vqa_csv(tmp_path: Path) -> None:
    put(tmp_path / "images" / "PMC1_F1.jpg", png(1))
    put(tmp_path / "images" / "PMC2_F2.jpg", png(2))
    header = [
        "Figure_path",
        "Question",
        "Answer",
        "Choice A",
        "Choice B",
        "Choice C",
        "Choice D",
        "Answer_label",
    ]
    rows = [
        [
            "PMC1_F1.jpg",
            " What does the scan show? ",
            "Focal uptake",
            " A:Diffuse uptake ",
            " B:Focal uptake ",
            " C:No uptake",
            " D:Ratio 2:1 ",
            "B",
        ],
        # Answer_label says A but the Answer text is option C's: the text wins, and it is recorded.
        [
            "PMC2_F2.jpg",
            "Which organ?",
            "Kidney",
            "A:Liver",
            "B:Spleen",
            "C:Kidney",
            "D:Heart",
            "A",
        ],
    ]
    buffer = io.StringIO()
    csv.writer(buffer).writerows([header, *rows])
    put(tmp_path / "test_clean.csv", buffer.getvalue())
    items = read("pmc_vqa", tmp_path)
    first, second = items
    assert (first.qid, first.question, first.answer) == ("0", "What does the scan show?", "B")
    assert first.choices == ["Diffuse uptake", "Focal uptake", "No uptake", "Ratio 2:1"]
    assert first.image == png(1) and second.image == png(2)
    assert first.metadata == {"answer_text": "Focal uptake"}
    assert second.answer == "C" and second.choices == ["Liver", "Spleen", "Kidney", "Heart"]
    assert second.metadata["answer_label_conflict"] == {
        "answer_label": "A",
        "answer": "Kidney",
        "used": "C",
    }
    assert first.source.endswith("test_clean.csv:2")  # CSV: the file's line (header is line 1)


def test_food101_hf_parquet_and_tarball(tmp_path: Path) -> None:
    hf = tmp_path / "hf" / "data"
    hf.mkdir(parents=True)
    for split, labels in (("train", [0]), ("validation", [62, 100])):
        rows = [
            {"image": _hf_image(png(label), f"{label}.jpg"), "label": label} for label in labels
        ]
        pq.write_table(pa.Table.from_pylist(rows), hf / f"{split}-00000-of-00001.parquet")
    items = read("food101", tmp_path / "hf")
    assert [(i.qid, i.answer, i.image) for i in items] == [
        ("0", "macaroni and cheese", png(62)),
        ("1", "waffles", png(100)),
    ]
    assert items[0].choices == list(FOOD101)

    tar = tmp_path / "food-101"
    put(tar / "meta" / "test.txt", "apple_pie/1011328\ncheese_plate/22\n")
    put(tar / "meta" / "classes.txt", "apple_pie\ncheese_plate\n")
    put(tar / "images" / "apple_pie" / "1011328.jpg", png(3))
    put(tar / "images" / "cheese_plate" / "22.jpg", png(4))
    items = read("food101", tar)
    assert [(i.qid, i.answer, i.image) for i in items] == [
        ("apple_pie/1011328", "apple pie", png(3)),
        ("cheese_plate/22", "cheese plate", png(4)),
    ]
    assert items[1].source.endswith("test.txt:2")


def test_foodseg103_hf_parquet(tmp_path: Path) -> None:
    rows = [
        {
            "id": 7,
            "image": _hf_image(png(1), "7.jpg"),
            "label": _hf_image(png(2), "7_mask.png"),
            "classes_on_image": [0, 2, 24, 103],
        },
        {
            "id": 8,
            "image": _hf_image(png(3), "8.jpg"),
            "label": _hf_image(png(4), "8_mask.png"),
            "classes_on_image": [96],
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "validation-00000-of-00001.parquet")
    items = read("foodseg103", tmp_path)
    assert [(i.qid, i.answer) for i in items] == [
        ("7", ["egg tart", "egg"]),
        ("8", ["French beans"]),
    ]
    assert items[0].image == png(1)
    assert items[0].choices == list(FOODSEG103.values()) and len(items[0].choices) == 102
    assert items[0].metadata == {"dropped_labels": [0, 103]}  # the mask is not metadata


def _dish(dish_id: str, ingredients: list[tuple[str, str]]) -> str:
    cells = [dish_id, "300.5", "193.0", "12.3", "28.2", "18.6"]
    for ingr_id, name in ingredients:
        cells += [ingr_id, name, "10.0", "5.0", "0.1", "1.0", "0.2"]
    return ",".join(cells)


def test_nutrition5k_release(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    put(
        tmp_path / "metadata" / "dish_metadata_cafe1.csv",
        "\n".join(
            [
                _dish(
                    "dish_1",
                    [("ingr_0000000508", "soy sauce"), ("ingr_0000000002", "strawberries")],
                ),
                _dish("dish_2", [("ingr_0000000001", "cottage cheese")]),
                _dish(
                    "dish_3", [("ingr_0000000002", "strawberries")]
                ),  # in the split, no overhead image
            ]
        )
        + "\n",
    )
    put(
        tmp_path / "metadata" / "dish_metadata_cafe2.csv",
        _dish("dish_4", [("ingr_0000000007", "bacon")]) + "\n",
    )
    put(tmp_path / "dish_ids" / "splits" / "rgb_test_ids.txt", "dish_1\ndish_3\ndish_4\n")
    for n, dish in enumerate(("dish_1", "dish_2", "dish_4")):
        put(tmp_path / "imagery" / "realsense_overhead" / dish / "rgb.png", png(n))
    with caplog.at_level(logging.WARNING):
        items = read("nutrition5k", tmp_path)
    assert [(i.qid, i.answer) for i in items] == [
        ("dish_1", ["soy sauce", "strawberries"]),
        ("dish_4", ["bacon"]),
    ]
    assert items[0].image == png(0) and items[1].image == png(2)
    # The vocabulary is the union over all dishes, in ingredient-id order.
    assert items[0].choices == ["cottage cheese", "strawberries", "bacon", "soy sauce"]
    assert items[0].metadata["total_calories"] == 300.5
    assert items[0].metadata["ingredient_ids"] == ["ingr_0000000508", "ingr_0000000002"]
    assert "skipped 1 dishes" in caplog.text
    # without images (scoring, resumed shards) the same dishes, in the same positions
    assert [i.qid for i in read("nutrition5k", tmp_path, images=False)] == ["dish_1", "dish_4"]


def test_nutrition5k_vocabulary_file(tmp_path: Path) -> None:
    put(
        tmp_path / "metadata" / "dish_metadata_cafe1.csv",
        _dish("dish_1", [("ingr_1", "bacon")]) + "\n",
    )
    put(tmp_path / "imagery" / "realsense_overhead" / "dish_1" / "rgb.png", png(1))
    put(
        tmp_path / "nutrition5k_ingredients.py",
        "all_ingredients = ['cottage cheese', 'bacon', 'deprecated', 'deprecated']\n",
    )
    items = read("nutrition5k", tmp_path)
    assert items[0].choices == ["cottage cheese", "bacon", "deprecated"]
    put(
        tmp_path / "ingredients.txt", "cottage cheese\nstrawberries\n"
    )  # takes precedence, lacks bacon
    fails("nutrition5k", tmp_path, line=1, field="ingredients")


def test_nutrition5k_generic_takes_union_of_answers(tmp_path: Path) -> None:
    put(tmp_path / "a.png", png(1))
    jsonl(
        tmp_path / "data.jsonl",
        [
            {"image": "a.png", "answer": ["rice", "egg"], "qid": "d1"},
            {"image": "a.png", "answer": ["apple"], "qid": "d2"},
        ],
    )
    items = read("nutrition5k", tmp_path)
    assert items[1].answer == ["apple"] and items[0].choices == ["apple", "egg", "rice"]


def test_recipe1m_layers(tmp_path: Path) -> None:
    recipes = [
        {
            "id": "r1",
            "title": "Pancakes",
            "partition": "test",
            "url": "http://x",
            "ingredients": [{"text": "flour"}, {"text": "milk"}],
            "instructions": [{"text": "Mix."}, {"text": "Fry."}],
        },
        {"id": "r2", "title": "Soup", "partition": "train", "ingredients": [], "instructions": []},
        {
            "id": "r3",
            "title": "No image",
            "partition": "test",
            "ingredients": [],
            "instructions": [],
        },
    ]
    put(tmp_path / "layer1.json", json.dumps(recipes))
    put(
        tmp_path / "layer2.json",
        json.dumps(
            [
                {"id": "r1", "images": [{"id": "abcd12.jpg", "url": "u"}]},
                {"id": "r2", "images": [{"id": "ffff.jpg", "url": "u"}]},
            ]
        ),
    )
    put(tmp_path / "images" / "test" / "a" / "b" / "c" / "d" / "abcd12.jpg", png(5))
    (item,) = read("recipe1m", tmp_path)
    assert item.qid == "r1" and item.image == png(5)
    assert item.answer == "Pancakes\nIngredients:\nflour\nmilk\nInstructions:\nMix.\nFry."
    assert item.question == RECIPE1M_QUESTION
    assert item.metadata == {"title": "Pancakes", "url": "http://x", "partition": "test"}


def test_ucmerced_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "UCMerced_LandUse" / "Images"
    put(root / "baseballdiamond" / "baseballdiamond00.tif", png(1))
    put(root / "agricultural" / "agricultural00.tif", png(2))
    put(root / "tenniscourt" / "tenniscourt07.png", png(3))
    put(root / "tenniscourt" / "Thumbs.db", b"not an image")
    items = read("ucmerced", tmp_path / "UCMerced_LandUse")
    assert [(i.qid, i.answer, i.image) for i in items] == [
        ("agricultural/agricultural00.tif", "agricultural", png(2)),
        ("baseballdiamond/baseballdiamond00.tif", "baseball diamond", png(1)),
        ("tenniscourt/tenniscourt07.png", "tennis court", png(3)),
    ]
    assert all(i.choices == list(UC_MERCED) for i in items)
    put(root / "volcano" / "v.tif", png(4))
    error = fails("ucmerced", tmp_path / "UCMerced_LandUse", line=None, field="class")
    assert "'volcano'" in str(error)


def test_clrs_class_folders(tmp_path: Path) -> None:
    put(tmp_path / "golf-course" / "golf-course_01.jpg", png(1))
    put(tmp_path / "storage-tank" / "x.png", png(2))
    items = read("clrs", tmp_path)
    assert [i.answer for i in items] == ["golf course", "storage tank"] and items[
        0
    ].choices == list(CLRS)


def test_floodnet_question_json(tmp_path: Path) -> None:
    put(tmp_path / "Images" / "Test_Image" / "10165.JPG", png(1))
    put(tmp_path / "Images" / "Test_Image" / "10166.jpg", png(2))
    questions = {
        "0": {
            "Image_ID": "10165.JPG",
            "Question": "How many buildings are flooded?",
            "Ground_Truth": 3,
            "Question_Type": "Simple_Counting",
        },
        "1": {
            "Image_ID": "10166.JPG",
            "Question": "Is the road flooded?",
            "Ground_Truth": "yes",
            "Question_Type": "Yes_No",
        },
    }
    put(tmp_path / "Test_Question.json", json.dumps(questions))
    items = read("floodnet", tmp_path)
    assert [(i.qid, i.question, i.answer, i.image) for i in items] == [
        ("0", "How many buildings are flooded?", "3", png(1)),
        ("1", "Is the road flooded?", "yes", png(2)),
    ]
    assert (
        items[0].metadata == {"Question_Type": "Simple_Counting"} and items[0].answer_type is None
    )


def test_nwpu_captions_json(tmp_path: Path) -> None:
    def entry(name: str, split: str, n: int) -> dict[str, Any]:
        captions = {f"raw_{k}": f"caption {k} of {name}." for k in range(1, 5)}
        return {
            "filename": name,
            "imgid": n,
            "split": split,
            "raw": f"caption 0 of {name}.",
            **captions,
            "sentids": [5 * n + k for k in range(5)],
        }

    data = {
        "airplane": [entry("airplane_001.jpg", "train", 0), entry("airplane_002.jpg", "test", 1)],
        "beach": [entry("beach_001.jpg", "test", 2)],
    }
    put(tmp_path / "dataset_nwpu.json", json.dumps(data))
    put(tmp_path / "NWPU_images" / "airplane" / "airplane_002.jpg", png(1))
    put(tmp_path / "NWPU_images" / "beach" / "beach_001.jpg", png(2))
    items = read("nwpu_captions", tmp_path)
    assert [(i.qid, i.answer, i.image) for i in items] == [
        ("airplane_002.jpg", "caption 0 of airplane_002.jpg.", png(1)),
        ("beach_001.jpg", "caption 0 of beach_001.jpg.", png(2)),
    ]
    assert items[0].metadata["references"] == [
        f"caption {k} of airplane_002.jpg." for k in range(1, 5)
    ]
    assert items[0].metadata["class"] == "airplane" and items[0].metadata["split"] == "test"
    assert items[1].source.endswith("dataset_nwpu.json#row2")


# -- generic form details ---------------------------------------------------------------------


def test_generic_parquet_with_raw_bytes_and_choices(tmp_path: Path) -> None:
    rows = [
        {
            "image": png(1),
            "question": "Which?",
            "answer": "b",
            "choices": ["one", "two"],
            "qid": "q1",
        },
        {
            "image": png(2),
            "question": "Which?",
            "answer": "Two",
            "choices": ["one", "two"],
            "qid": "q2",
        },
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data.parquet")
    items = read("pmc_vqa", tmp_path / "data.parquet")
    assert [(i.qid, i.answer, i.choices, i.image) for i in items] == [
        ("q1", "B", ["one", "two"], png(1)),
        ("q2", "B", ["one", "two"], png(2)),
    ]
    assert items[1].metadata == {"answer_text": "two", "answer_from_text": True}


def test_generic_classification_names(tmp_path: Path) -> None:
    put(tmp_path / "a.png", png(1))
    jsonl(
        tmp_path / "data.jsonl",
        [
            {"image": "a.png", "label": "golfcourse"},
            {"image": "a.png", "answer": "Mobile_Home_Park", "qid": 5},
        ],
    )
    assert [(i.qid, i.answer) for i in read("ucmerced", tmp_path)] == [
        ("0", "golf course"),
        ("5", "mobile home park"),
    ]
    jsonl(
        tmp_path / "data.jsonl",
        [{"image": "a.png", "label": "hot_dog", "choices": ["hot_dog", "pizza"]}],
    )
    (item,) = read("food101", tmp_path)
    assert (item.answer, item.choices) == ("hot dog", ["hot dog", "pizza"])


# -- malformed files --------------------------------------------------------------------------


@pytest.fixture
def vqa_dir(tmp_path: Path) -> Path:
    put(tmp_path / "images" / "a.png", png(1))
    return tmp_path


GOOD = {"image": "images/a.png", "question": "Is it?", "answer": "yes", "answer_type": "CLOSED"}


@pytest.mark.parametrize(
    ("rows", "line", "field", "words"),
    [
        ([GOOD, '{"image": "images/a.png", "question": '], 2, None, "invalid JSON"),
        ([GOOD, GOOD, "[1, 2]"], 3, None, "JSON object"),
        (
            [{**GOOD, "qid": 10}, {k: v for k, v in GOOD.items() if k != "question"}],
            2,
            "question",
            "missing",
        ),
        ([{k: v for k, v in GOOD.items() if k != "answer"}], 1, "answer", "missing"),
        ([GOOD, {**GOOD, "answer": {"text": "yes"}}], 2, "answer", "expected a string, got dict"),
        ([{**GOOD, "answer": ["yes"]}], 1, "answer", "expected a string, got list"),
        ([{**GOOD, "question": 3}], 1, "question", "expected a string"),
        ([GOOD, "", {**GOOD, "image": "images/missing.png"}], 3, "image", "image file not found"),
        ([{k: v for k, v in GOOD.items() if k != "image"}], 1, "image", "missing"),
        ([{**GOOD, "answer_type": "BINARY"}], 1, "answer_type", "unknown answer_type 'BINARY'"),
        ([{**GOOD, "qid": "x"}, {**GOOD, "qid": "x"}], 2, "qid", "duplicate qid 'x'"),
        ([{**GOOD, "qid": [1]}], 1, "qid", "expected a string or integer"),
        ([{**GOOD, "answer": "  "}], 1, "answer", "empty answer"),
    ],
)
def test_malformed_jsonl(
    vqa_dir: Path, rows: list[Any], line: int, field: str | None, words: str
) -> None:
    jsonl(vqa_dir / "data.jsonl", rows)
    error = fails("slake", vqa_dir, line=line, field=field)
    assert error.file == str(vqa_dir / "data.jsonl")
    assert words in str(error)


def test_rows_before_the_bad_one_are_yielded(vqa_dir: Path) -> None:
    jsonl(vqa_dir / "data.jsonl", [GOOD, GOOD, "not json"])
    items = read_items("slake", str(vqa_dir))
    assert next(items).qid == "0" and next(items).qid == "1"
    with pytest.raises(BenchmarkFormatError, match="line 3"):
        next(items)


def test_malformed_release_files(tmp_path: Path) -> None:
    put(tmp_path / "slake" / "test.json", '[{"img_name": "a.jpg",\n "question": }]')
    fails(
        "slake", tmp_path / "slake", line=2, field=None, unit="line"
    )  # a JSON syntax error: the text line

    put(tmp_path / "rad" / "images" / "a.jpg", png(1))
    put(
        tmp_path / "rad" / "testset.json",
        json.dumps(
            [
                {
                    "qid": 1,
                    "image_name": "a.jpg",
                    "question": "Q?",
                    "answer": "yes",
                    "answer_type": "CLOSED",
                },
                {
                    "qid": 2,
                    "image_name": "b.jpg",
                    "question": "Q?",
                    "answer": "yes",
                    "answer_type": "CLOSED",
                },
            ]
        ),
    )
    error = fails("vqa_rad", tmp_path / "rad", line=1, field="image_name")
    assert "b.jpg" in str(error)

    header = "Figure_path,Question,Answer,Choice A,Choice B,Choice C,Choice D,Answer_label\n"
    put(tmp_path / "pmc" / "images" / "f.jpg", png(1))
    put(
        tmp_path / "pmc" / "test_clean.csv",
        header + "f.jpg,Q?,Liver,A:Kidney,B:Heart,C:Lung,D:Skin,E\n",
    )
    fails("pmc_vqa", tmp_path / "pmc", line=2, field="Answer_label")
    put(
        tmp_path / "pmc" / "test_clean.csv",
        header + "f.jpg,Q?,Heart,A:Kidney,B:Heart,C:Lung,D:Skin,B\nf.jpg,Q?\n",
    )
    fails("pmc_vqa", tmp_path / "pmc", line=3, field=None)

    put(
        tmp_path / "n5k" / "metadata" / "dish_metadata_cafe1.csv",
        "dish_1,1,2,3,4,5,ingr_1,bacon,1,2\n",
    )
    fails("nutrition5k", tmp_path / "n5k", line=1, field="ingredients")

    put(
        tmp_path / "nwpu" / "dataset_nwpu.json",
        json.dumps({"beach": [{"filename": "b.jpg", "split": "test"}]}),
    )
    fails("nwpu_captions", tmp_path / "nwpu", line=0, field="raw")

    pq.write_table(
        pa.Table.from_pylist([{"image": png(1), "label": 101}]), tmp_path / "validation.parquet"
    )
    fails("food101", tmp_path / "validation.parquet", line=0, field="label")

    pq.write_table(
        pa.Table.from_pylist([{"image": png(1), "classes_on_image": [104]}]),
        tmp_path / "fs.parquet",
    )
    fails("foodseg103", tmp_path / "fs.parquet", line=0, field="classes_on_image")

    put(tmp_path / "flood" / "q.json", json.dumps({"7": {"Image_ID": "1.jpg", "Question": "Q?"}}))
    put(tmp_path / "flood" / "1.jpg", png(1))
    fails("floodnet", tmp_path / "flood", line=0, field="Ground_Truth")


def test_unrecognised_inputs(tmp_path: Path) -> None:
    error = fails("slake", tmp_path / "absent", line=None, field=None)
    assert "no such file or folder" in str(error)
    (tmp_path / "empty").mkdir()
    error = fails("recipe1m", tmp_path / "empty", line=None, field=None)
    assert "layer1.json" in str(error)
    put(tmp_path / "mixed" / "train.parquet", b"")
    put(tmp_path / "mixed" / "val.parquet", b"")
    assert "test split" in str(fails("pathvqa", tmp_path / "mixed", line=None, field=None))
    put(tmp_path / "broken" / "test.parquet", b"not parquet")
    assert "Parquet" in str(fails("pathvqa", tmp_path / "broken", line=None, field=None))
    jsonl(tmp_path / "food" / "data.jsonl", [{"image": "a.png", "label": "sandwich"}])
    put(tmp_path / "food" / "a.png", png(1))
    assert "not one of the 101" in str(fails("food101", tmp_path / "food", line=1, field="label"))


def test_adaptllm_release_rows_keep_their_templated_input(tmp_path: Path) -> None:
    """AdaMLLM's own benchmark release (`input` already templated, `label`): sent unchanged."""
    folder = tmp_path / "adaptllm"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "a.png").write_bytes(png(1))
    rows = [
        {
            "image": "images/a.png",
            "input": "Is there a fracture?",
            "label": "no",
            "answer_type": "CLOSED",
        },
        {
            "image": "images/a.png",
            "input": "Question: What is shown? The choices are: A:CT B:MRI",
            "label": "B",
            "A": "CT",
            "B": "MRI",
        },
    ]
    (folder / "slake.jsonl").write_text(json.dumps(rows[0]) + "\n")
    (folder / "pmc.jsonl").write_text(json.dumps(rows[1]) + "\n")
    (slake,) = read("slake", folder / "slake.jsonl")
    assert (slake.prompt, slake.question, slake.answer, slake.answer_type) == (
        "Is there a fracture?",
        "",
        "no",
        "CLOSED",
    )
    (pmc,) = read("pmc_vqa", folder / "pmc.jsonl")
    assert pmc.prompt == rows[1]["input"] and pmc.choices == ["CT", "MRI"] and pmc.answer == "B"

    (folder / "recipe.jsonl").write_text(
        json.dumps({"image": "images/a.png", "answer": "Pasta"}) + "\n"
    )
    fails(
        "recipe1m", folder / "recipe.jsonl", line=1, field="question"
    )  # no invented question for generic rows


def test_images_can_be_skipped_per_item(world_sources: tuple[Path, dict]) -> None:
    source = str(world_sources[0] / "benchmark")
    items = list(
        read_items("proving_ground", source, limit=6, images=lambda position: position >= 4)
    )
    assert [bool(i.image) for i in items] == [False] * 4 + [True] * 2
    assert all(not i.image for i in read_items("proving_ground", source, limit=3, images=False))
