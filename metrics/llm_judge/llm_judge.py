"""LLM-as-judge grades for story completions: the TinyStories paper's evaluation scheme.

The judge (any OpenAI-compatible chat endpoint) reads the story beginning and the completion after a `***`
marker, assesses it, then grades grammar, creativity, consistency and plot from 1 to 10 and guesses the
writer's age group (A: 3 or under ... F: 13-16). Malformed answers and failed requests are counted, never
raised; means come with Student-t 95% confidence intervals.
"""

import datasets
import evaluate

from tinystories.evaluation.judge import CATEGORIES, JudgeArguments, run_judge

_CITATION = """\
@article{eldan2023tinystories,
  title   = {TinyStories: How Small Can Language Models Be and Still Speak Coherent English?},
  author  = {Eldan, Ronen and Li, Yuanzhi},
  journal = {arXiv preprint arXiv:2305.07759},
  year    = {2023}
}
"""

_DESCRIPTION = (
    "GPT-Eval of the TinyStories paper: an LLM grades story completions (1-10) and guesses an age group."
)

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[str]`): the model's completions.
    prompts (`list[str]`): the story beginnings they continue (same length).
    base_url (`str`): OpenAI-compatible endpoint, e.g. "https://api.openai.com/v1" or "http://127.0.0.1:8000/v1".
    model (`str`): judge model name.
    api_key_env (`str`, defaults to "OPENAI_API_KEY"): environment variable with the key (local servers need none).
    concurrency (`int`, 8), max_retries (`int`, 4), timeout (`float`, 120), max_tokens (`int`, 400),
    temperature (`float`, 0.0), two_turn (`bool`, True: assessment then grades, as in the paper).
Returns:
    `<category>` means and `<category>_ci95` intervals for grammar, creativity, consistency and plot,
    `graded`, `malformed`, `failed` counts, `age_groups` counts, and `details` (the full summary).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class LLMJudge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "prompts": datasets.Value("string")}
            ),
            reference_urls=["https://arxiv.org/abs/2305.07759"],
        )

    def _compute(
        self,
        predictions,
        prompts,
        base_url=None,
        model=None,
        api_key_env="OPENAI_API_KEY",
        concurrency=8,
        max_retries=4,
        timeout=120.0,
        max_tokens=400,
        temperature=0.0,
        two_turn=True,
    ):
        judge_args = JudgeArguments(
            judge_base_url=base_url,
            judge_model=model,
            judge_api_key_env=api_key_env,
            judge_concurrency=concurrency,
            judge_max_retries=max_retries,
            judge_timeout=timeout,
            judge_max_tokens=max_tokens,
            judge_temperature=temperature,
            judge_single_turn=not two_turn,
        )
        rows = [
            {"id": str(i), "prompt": p, "completion": c}
            for i, (p, c) in enumerate(zip(prompts, predictions, strict=True))
        ]
        _, summary = run_judge(rows, judge_args, progress=False)
        out = {}
        for cat in CATEGORIES:
            out[cat] = summary["scores"][cat]["mean"]
            out[f"{cat}_ci95"] = summary["scores"][cat]["ci95"]
        out.update(
            graded=summary["graded"],
            malformed=summary["malformed"],
            failed=summary["failed"],
            age_groups=summary["age_groups"],
            details=summary,
        )
        return out
