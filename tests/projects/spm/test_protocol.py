"""``generate --protocol official``: each official evaluator's settings (objects, ESD artists, I2P, COCO-30k) from
the CSV columns or ``--templates``, options given on the command line winning, and per-row CFG honoured by default.
(The CLI run with the protocol is in test_generate.py, on its tiny base.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from projects.spm.tools.generate import build_jobs, parse_args
from projects.spm.tools.protocol import OFFICIAL_NEGATIVE_PROMPT, detect_task

ARTWORK = "case_number,prompt,evaluation_seed,evaluation_guidance\n0,a starry night by van gogh,5,10.0\n"
I2P = ("prompt,categories,sd_seed,sd_guidance_scale,sd_image_width,sd_image_height\n"
       "a person at the beach,sexual,7,9.5,512,768\n")
COCO = "image_id,prompt,evaluation_seed,width,height\n3,a cat on a sofa,9,640,427\n"


def args_for(tmp_path: Path, csv_text: str | None, *extra: str):
    source = ["--prompts", "a red circle"]
    if csv_text is not None:
        (tmp_path / "p.csv").write_text(csv_text)
        source = ["--prompts_csv", str(tmp_path / "p.csv")]
    return parse_args(["--base_model", "m", "--out", "o", *source, *extra])


def test_artwork_rows_keep_cfg_7_5_as_the_official_evaluator_does(tmp_path: Path):
    args = args_for(tmp_path, ARTWORK, "--protocol", "official")
    assert (args.task, args.sampler, args.steps, args.seed) == ("artwork", "default", 30, 2024)
    assert args.negative_prompt == OFFICIAL_NEGATIVE_PROMPT and args.composition == "official"
    jobs = build_jobs(args, native_size=512, multiple=8)
    assert [j.seed for j in jobs] == list(range(5, 25))  # 20 images from the row's evaluation_seed
    assert {j.guidance for j in jobs} == {7.5}            # evaluation_guidance 10 is not read by the official code


def test_our_protocol_honours_each_rows_evaluation_guidance(tmp_path: Path):
    args = args_for(tmp_path, ARTWORK)
    assert [j.guidance for j in build_jobs(args, 512, 8)] == [10.0]
    assert [j.guidance for j in build_jobs(args_for(tmp_path, ARTWORK, "--no-row_guidance"), 512, 8)] == [7.5]


def test_i2p_and_coco_rows(tmp_path: Path):
    args = args_for(tmp_path, I2P, "--protocol", "official")
    assert (args.task, args.negative_prompt) == ("i2p", "")
    [job] = build_jobs(args, 512, 8)
    assert (job.seed, job.guidance, job.width, job.height) == (7, 9.5, 512, 768)
    args = args_for(tmp_path, COCO, "--protocol", "official")
    assert (args.task, args.negative_prompt) == ("coco", "")
    [job] = build_jobs(args, 512, 8)
    assert (job.seed, job.guidance, job.width, job.height) == (9, 7.5, 640, 424)  # 427 -> a multiple of 8


def test_object_templates_and_explicit_options_win(tmp_path: Path):
    args = args_for(tmp_path, None, "--templates", "imagenet80", "--protocol", "official", "--steps", "5",
                    "--facilitate_factor", "2")
    assert (args.task, args.images_per_prompt, args.steps, args.facilitate_factor) == ("object", 10, 5, 2.0)
    jobs = build_jobs(args, 512, 8)
    assert len(jobs) == 800 and [j.seed for j in jobs[:10]] == list(range(2024, 2034))
    assert args_for(tmp_path, None, "--protocol", "official").task == "general"
    with pytest.raises(SystemExit):
        args_for(tmp_path, None, "--protocol", "official", "--task", "nudity")


def test_detect_task_from_columns(tmp_path: Path):
    for text, task in ((ARTWORK, "artwork"), (I2P, "i2p"), (COCO, "coco"), ("prompt\nx\n", "general")):
        assert detect_task(args_for(tmp_path, text)) == task

