"""Translation quality: decode source texts with `tfm.generate` and score them with sacreBLEU.

- `corpus_scores(hypotheses, references)`: corpus BLEU and chrF (sacreBLEU's defaults: 13a
  tokenisation, exponential smoothing, chrF with character 6-grams) and their signature strings.
- `translation_eval(model, params, data, config, workdir, step)`: the decoding evaluation of a seq2seq
  run (train.eval_decode_examples validation pairs): scores, a printable report with example
  translations, and WORKDIR/eval_translations.json.
The decoding itself is tfm.generate.translate's (`translate`, `decode_settings`).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Optional, Sequence

from tfm.generate.translate import decode_settings, translate

NUM_EXAMPLES = 3  # example translations printed with each eval


def corpus_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict:
  """Returns {"bleu", "chrf", "bleu_signature", "chrf_signature", "bleu_details"} of one reference per hypothesis."""
  from sacrebleu.metrics import BLEU, CHRF
  if len(hypotheses) != len(references):
    raise ValueError(f"corpus_scores: {len(hypotheses)} hypotheses but {len(references)} references")
  bleu, chrf = BLEU(), CHRF()
  b = bleu.corpus_score(list(hypotheses), [list(references)])
  c = chrf.corpus_score(list(hypotheses), [list(references)])
  return {"bleu": float(b.score), "chrf": float(c.score),
          "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
          "bleu_details": {"precisions": [float(p) for p in b.precisions], "brevity_penalty": float(b.bp),
                           "hyp_len": int(b.sys_len), "ref_len": int(b.ref_len)}}


def translation_eval(model, params, data, config, workdir: Optional[str] = None, step: int = 0, log=None,
                     greedy: bool = False) -> dict:
  """Returns {"scores": {"bleu", "chrf"}, "summary": fields for summary.json, "report": text to print}.

  Translates the first train.eval_decode_examples validation pairs of `data` (-1: all) with the
  config's decoding settings (`greedy`: with one beam, summary fields named eval_*_greedy) and
  scores them against the references with sacreBLEU; writes every (source, reference,
  translation) to WORKDIR/eval_translations.json when `workdir` is given.
  """
  from tfm.train.writers import write_json
  n = config.train.eval_decode_examples
  pairs = data.eval_pairs if n < 0 else data.eval_pairs[:n]
  settings = decode_settings(config)
  if greedy:
    settings = dataclasses.replace(settings, num_beams=1)
  t0 = time.time()
  hyps = translate(model, params, data.tokenizer, [s for s, _ in pairs], settings, log=log)
  seconds = time.time() - t0
  refs = [r for _, r in pairs]
  scores = corpus_scores(hyps, refs)
  how = f"beam {settings.num_beams}, length penalty {settings.length_penalty:g}" if settings.num_beams > 1 else "greedy"
  lines = [f"  BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f} on {len(pairs)} validation pairs ({how}, "
           f"{seconds:.1f}s)"]
  for (src, ref), hyp in list(zip(pairs, hyps))[:NUM_EXAMPLES]:
    lines.append(f"  source:      {src}\n  reference:   {ref}\n  translation: {hyp}")
  if workdir is not None:
    write_json(os.path.join(workdir, "eval_translations.json"),
               {"step": step, **{k: v for k, v in scores.items()}, "decoding": dataclasses.asdict(settings),
                "translations": [{"source": s, "reference": r, "translation": h} for (s, r), h in zip(pairs, hyps)]})
  if greedy:
    summary = {"eval_bleu_greedy": scores["bleu"], "eval_chrf_greedy": scores["chrf"],
               "eval_decode_seconds_greedy": seconds}
    return {"scores": {"bleu": scores["bleu"], "chrf": scores["chrf"]}, "summary": summary,
            "report": "\n" + lines[0], "translations": hyps}
  summary = {"eval_bleu": scores["bleu"], "eval_chrf": scores["chrf"], "bleu_signature": scores["bleu_signature"],
             "chrf_signature": scores["chrf_signature"], "eval_decoding": how, "eval_decode_examples": len(pairs),
             "eval_decode_seconds": seconds}
  return {"scores": {"bleu": scores["bleu"], "chrf": scores["chrf"]}, "summary": summary,
          "report": "\n" + "\n".join(lines), "translations": hyps}


