"""`llm-jax rl`: reinforcement learning with verifiable rewards, resumable from its workdir.

    [rl.sft_steps supervised steps on the task's demonstrations]
    then each of train.max_steps RL steps:
      prompts (from (seed, step)) -> G samples each (the engine, rollout.py, key from (seed, step))
      -> rewards (the task's verifier) -> group advantages -> train.rl_epochs clipped
      policy-gradient updates on that batch (one jitted step, losses.py)

The state (`RLState`) is the train state plus the frozen reference policy of the KL penalty
(rl.kl_coef > 0): the policy RL starts from. Everything a step does is a function of (config,
seed, step, state), so a run killed at any point and resumed from its last checkpoint repeats the
uninterrupted run exactly (tests/test_rl.py). A run writes what `llm-jax train` writes: config.json
and tokenizer.json, Orbax checkpoints (checkpoint.py), metrics.jsonl (one record per RL step,
`reward`, `ratio_mismatch` and the rest, docs/rl.md) and TensorBoard events, and summary.json.
The steps run on config.parallel's mesh (jit over data / fsdp / tensor; pmap is refused).
"""

import json
import os
import time

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from llm_jax.data.tokenizers import CharTokenizer
from llm_jax.errors import UserError
from llm_jax.fileio import METRICS_FILE, atomic_write, read_metrics, write_json
from llm_jax.models import axes, build_model, init_params
from llm_jax.models.flops import count_params
from llm_jax.rl import losses, rollout, tasks
from llm_jax.training import (checkpoint, finetune, parallel, sharding, signals,
                              workdir as workdir_lib)
from llm_jax.training.events import EventWriter
from llm_jax.training.optimizer import make_optimizer

# fold_in tags: the rollouts' sampling keys and the prompts' streams of a step
ROLLOUT_KEY, SFT_STREAM, RL_STREAM = 0x524C, 1, 2


@flax.struct.dataclass
class RLState:
  step: jax.Array  # () int32: steps done (SFT steps, then RL steps)
  params: object
  opt_state: object
  ref_params: object  # the KL's frozen reference (rl.kl_coef > 0), else None


def step_rng(seed: int, step: int):
  """The sampling key of the rollouts of `step`: a function of (seed, step) alone."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), ROLLOUT_KEY), step)


def step_prompts(task, seed: int, step: int, n: int, stream: int) -> list:
  return task.prompts(np.random.default_rng([seed % 2**63, stream, step]), n)


def make_steps(model, tx, rc, rl_epochs: int):
  """The pure steps: sft_step(state, batch) -> (state, metrics) on {'tokens', 'mask'} (the mean
  negative log-likelihood of the masked next tokens), and rl_step(state, batch) -> (state,
  metrics) on rollout.to_batch's rows plus 'adv' and 'weight' (B,): rl_epochs GRPO updates, the
  metrics of the first (its ratio is the sampler's mismatch) with the mean loss of all."""
  kw = dict(clip_low=rc.clip_low, clip_high=rc.clip_high, kl_coef=rc.kl_coef,
            loss_norm=rc.loss_norm, importance=rc.importance)

  def apply(state, grads, params, opt_state):
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  def sft_step(state, batch):
    def loss_fn(params):
      logp_BT = rollout.policy_logprobs(model, params, batch["tokens"])
      m_BT = batch["mask"]
      return -(logp_BT * m_BT).sum() / jnp.maximum(m_BT.sum(), 1.0)
    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    params, opt_state = apply(state, grads, state.params, state.opt_state)
    return (state.replace(step=state.step + 1, params=params, opt_state=opt_state),
            {"sft_loss": loss, "grad_norm": optax.tree.norm(grads)})

  def rl_step(state, batch):
    tokens_BT, mask_BT = batch["tokens"], batch["mask"]
    ref_BT = (jax.lax.stop_gradient(rollout.policy_logprobs(model, state.ref_params, tokens_BT))
              if rc.kl_coef else jnp.zeros(tokens_BT.shape, jnp.float32))

    def loss_fn(params):
      logits_BTV = model.apply({"params": params}, tokens_BT, train=False)
      logp_BT = losses.token_logprobs(logits_BTV, tokens_BT)
      loss, m = losses.grpo_loss(logp_BT, batch["old_logp"], ref_BT, batch["adv"], mask_BT,
                                 batch["weight"], **kw)
      m["entropy"] = ((losses.entropy(logits_BTV) * mask_BT).sum() /
                      jnp.maximum(mask_BT.sum(), 1.0))
      return loss, m

    def update(carry, _):
      params, opt_state = carry
      (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
      params, opt_state = apply(state, grads, params, opt_state)
      return (params, opt_state), {**m, "loss": loss, "grad_norm": optax.tree.norm(grads)}

    (params, opt_state), ms = jax.lax.scan(update, (state.params, state.opt_state), None,
                                           length=rl_epochs)
    metrics = {k: v[0] for k, v in ms.items()}
    metrics["loss"] = ms["loss"].mean()
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return sft_step, rl_step


def make_rl_optimizer(config):
  """train.optimizer with its schedule, its updates scaled by rl.lr_scale from the first RL update
  on (the optimizer's own count: rl.sft_steps supervised updates come first, one per step)."""
  rc = config.rl
  if rc.lr_scale == 1.0:
    return make_optimizer(config.train)
  scale = lambda count: jnp.where(count < rc.sft_steps, 1.0, rc.lr_scale)
  return optax.chain(make_optimizer(config.train), optax.scale_by_schedule(scale))


class Program:
  """The model, optimizer and jitted steps of a config on its mesh (parallel.placement's)."""

  def __init__(self, config, tokenizer):
    rc, tc = config.rl, config.train
    if config.parallel == "pmap":
      raise UserError("config.parallel='pmap' is not supported by `llm-jax rl`: use 'auto' (the "
                      "mesh) or 'none'")
    self.model = build_model(config.model, tokenizer.vocab_size)
    self.tx = make_rl_optimizer(config)
    place = parallel.placement(config, self.model, self.tx)
    self.mesh, self.description = place.mesh, place.description
    rows = {"rl.prompts_per_step * rl.group_size": rc.prompts_per_step * rc.group_size,
            "train.batch_size (the SFT batch)": tc.batch_size if rc.sft_steps else 0}
    for name, n in rows.items():
      if n % place.batch_divisor:
        raise UserError(f"config.{name} = {n} does not divide by the {place.batch_divisor} "
                        f"devices the batch is split over ({place.description}): use a multiple")
    ref = place.params_sharding if rc.kl_coef else None
    self.state_sharding = RLState(step=place.state_sharding.step,
                                  params=place.state_sharding.params,
                                  opt_state=place.state_sharding.opt_state, ref_params=ref)
    self.params_sharding = place.params_sharding
    self.batch_sharding = sharding.batch_sharding(self.mesh, 0)
    self.replicated = NamedSharding(self.mesh, P())
    sft, rl = make_steps(self.model, self.tx, rc, tc.rl_epochs)
    self.sft_step, self.rl_step = self._jit(sft), self._jit(rl)
    self.with_ref = jax.jit(lambda s: s.replace(ref_params=s.params),
                            out_shardings=self.state_sharding, donate_argnums=0)

  def _jit(self, fn):
    jitted = jax.jit(fn, in_shardings=(self.state_sharding, self.batch_sharding),
                     out_shardings=(self.state_sharding, self.replicated), donate_argnums=0)

    def call(state, batch):
      with axes.sharded_by(lambda names, shape: NamedSharding(
          self.mesh, sharding.spec_for(names, shape, self.mesh))):
        return jitted(state, self.put(batch))
    return call

  def put(self, batch):
    """Host rows (the same on every process) -> global arrays split over (data, fsdp)."""
    return {k: jax.make_array_from_callback(v.shape, self.batch_sharding,
                                            lambda i, v=v: np.asarray(v)[i])
            for k, v in batch.items()}

  def init_state(self, config, host_params=None):
    """Fresh parameters from the seed, or host_params (train.init_from's); the reference is the
    starting parameters."""
    kl = bool(config.rl.kl_coef)

    def make(params):
      return RLState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=self.tx.init(params), ref_params=params if kl else None)
    if host_params is not None:
      placed = jax.tree.map(lambda x, s: jax.make_array_from_callback(
          np.shape(x), s, lambda i, x=x: np.asarray(x)[i]), host_params, self.params_sharding)
      return jax.jit(make, out_shardings=self.state_sharding)(placed)
    key = jax.random.key(config.seed)
    return jax.jit(lambda: make(init_params(self.model, config.model, key)),
                   out_shardings=self.state_sharding)()


def _tokenizer(config, workdir, task, defaults=None):
  tok = workdir_lib.read_tokenizer(workdir)
  if tok is None and config.train.init_from:
    tok = finetune.source_run(config, defaults)[1]
  if tok is None:
    if config.data.tokenizer != "char":
      raise UserError(f"config.data.tokenizer={config.data.tokenizer!r}: a fresh RL run uses the "
                      f"task's characters ('char'); a run with another tokenizer starts from "
                      f"train.init_from=<its run>")
    tok = CharTokenizer("".join(sorted(set(task.alphabet))))
  try:
    tok.encode(task.alphabet)
    stop = tok.encode(task.stop)
  except UserError as e:
    raise UserError(f"rl task {task.name!r} writes text this run's tokenizer cannot encode ({e})")
  if len(stop) != 1:
    raise UserError(f"rl task {task.name!r}: its stop string {task.stop!r} is {len(stop)} tokens "
                    f"for this tokenizer; use a task whose stop string is one token")
  return tok, int(stop[0])


def _encode_prompts(tok, prompts, config):
  ids = [tok.encode(p.text) for p in prompts]
  limit = config.model.block_size - config.rl.max_new_tokens
  for p, x in zip(prompts, ids):
    if len(x) > limit:
      raise UserError(f"the prompt {p.text!r} is {len(x)} tokens, and with "
                      f"config.rl.max_new_tokens={config.rl.max_new_tokens} it exceeds "
                      f"config.model.block_size={config.model.block_size}: raise block_size or "
                      f"lower max_new_tokens")
  return ids


def sft_batch(task, tok, config, step: int) -> dict:
  """train.batch_size demonstrations of step `step`: prompt + answer rows, the answer's tokens
  masked in (rollout.to_batch's convention)."""
  prompts = step_prompts(task, config.seed, step, config.train.batch_size, SFT_STREAM)
  ids = _encode_prompts(tok, prompts, config)
  T = config.model.block_size
  tokens, mask = np.zeros((len(ids), T), np.int32), np.zeros((len(ids), T), np.float32)
  for i, (p, x) in enumerate(zip(prompts, ids)):
    demo = task.demonstration(p)
    if demo is None:
      raise UserError(f"config.rl.sft_steps={config.rl.sft_steps}: rl task {task.name!r} has no "
                      f"demonstrations; use sft_steps=0 and train.init_from=<a trained run>")
    answer = tok.encode(demo)[:config.rl.max_new_tokens]
    row = np.concatenate([x, answer])
    tokens[i, :len(row)] = row
    mask[i, len(x) - 1:len(row) - 1] = 1
  return {"tokens": tokens, "mask": mask}


def rollouts(program, state, task, tok, stop_id, config, step: int):
  """The RL batch of `step` (host arrays) and what was sampled: (batch, rewards, completions)."""
  rc = config.rl
  prompts = step_prompts(task, config.seed, step, rc.prompts_per_step, RL_STREAM)
  ids = _encode_prompts(tok, prompts, config)
  completions = rollout.sample(program.model, state.params, ids, step_rng(config.seed, step),
                               group_size=rc.group_size, block_size=config.model.block_size,
                               max_new_tokens=rc.max_new_tokens, temperature=rc.temperature,
                               eos_id=stop_id)
  rewards = []
  for c in completions:
    text = tok.decode(c.tokens).split(task.stop)[0]
    rewards.append(tasks.score(task, prompts[c.prompt_index], text))
  rewards = np.asarray(rewards, np.float32)
  adv, weight = losses.group_advantages(jnp.asarray(rewards), rc.group_size, rc.std_normalize,
                                        rc.skip_equal_groups)
  batch = rollout.to_batch(ids, completions, rc.group_size, config.model.block_size)
  batch.update(adv=np.asarray(adv), weight=np.asarray(weight))
  return batch, rewards, completions


class _Log:
  """metrics.jsonl (records past the restored step dropped on resume, as training's) and the
  TensorBoard events, written by process 0."""

  def __init__(self, workdir, start, is_main):
    self.is_main = is_main
    self.path = os.path.join(workdir, METRICS_FILE)
    self.events = None
    if is_main:
      kept = [r for r in read_metrics(self.path) if r["step"] <= start]
      with atomic_write(self.path) as f:
        f.writelines(json.dumps(r) + "\n" for r in kept)
      self.events = EventWriter(workdir, start)

  def write(self, record):
    if not self.is_main:
      return
    with open(self.path, "a", encoding="utf-8") as f:
      f.write(json.dumps(record) + "\n")
    self.events.scalars(record, record, "rl")
    self.events.writer.flush()

  def close(self):
    if self.events:
      self.events.close()


def rl_train(config, workdir: str, defaults: dict | None = None) -> dict:
  """Runs config's RL in workdir (resuming what is there). Returns the run's summary. The caller
  validates the config (config.validate), as for training, and passes its defaults (as a dict:
  the fields a run saved by an older version lacks, workdir.read_config)."""
  rc, tc = config.rl, config.train
  task = tasks.get_task(rc.task, config.seed)
  parallel.init_distributed(config.distributed)
  is_main = jax.process_index() == 0
  workdir = os.path.abspath(workdir)
  workdir_lib.check_writable(workdir)
  saved = workdir_lib.read_config(workdir, defaults)
  if saved is not None:
    workdir_lib.check_same_run(config, saved)
    _check_finished_unchanged(config, saved, workdir)
  tok, stop_id = _tokenizer(config, workdir, task, defaults)
  program = Program(config, tok)
  if tc.init_from:
    finetune.source_run(config, defaults)  # the source's model must be this one
  host_params = finetune.load_params(config, defaults) if tc.init_from else None
  state = program.init_state(config, host_params)
  manager = checkpoint.make_manager(workdir, tc.keep_checkpoints)
  meta = workdir_lib.checkpoint_meta()
  if manager.all_steps():
    state, meta = checkpoint.restore_latest_good(manager, state, move_bad=is_main)
    state = jax.tree.map(lambda x, s: jax.make_array_from_callback(
        np.shape(x), s, lambda i, x=x: np.asarray(x)[i]) if not isinstance(x, jax.Array) else x,
        state, program.state_sharding)
  start = int(np.asarray(state.step.addressable_shards[0].data))
  total = rc.sft_steps + tc.max_steps
  if start >= total:
    manager.close()
    print(f"llm-jax rl: {workdir} is done: step {start} of {total}; nothing to train", flush=True)
    return workdir_lib.read_summary(workdir) or {"step": start}
  if is_main:
    workdir_lib.write_run_files(workdir, config, tok)
  log = _Log(workdir, start, is_main)
  n_params = count_params(jax.eval_shape(lambda p: p, state.params))[0]
  if is_main:
    print(f"llm-jax rl: {config.model.name}, {n_params / 1e6:.2f}M parameters, task "
          f"{task.name!r}, {rc.prompts_per_step} prompts x {rc.group_size} samples a step, "
          f"{tc.rl_epochs} update(s) each, {program.description}; " +
          (f"resuming at step {start}" if start else "starting") + f" in {workdir}", flush=True)
  try:
    with signals.StopRequest("llm-jax rl") as stop:
      for step in range(start, total):
        if step == rc.sft_steps and rc.sft_steps and rc.kl_coef:
          state = program.with_ref(state)  # the reference: the policy RL starts from
        if step < rc.sft_steps:
          state, m = program.sft_step(state, sft_batch(task, tok, config, step))
          if (step + 1) % tc.log_interval == 0 or step + 1 == rc.sft_steps:
            record = {"step": step + 1, **{k: float(v) for k, v in jax.device_get(m).items()}}
            log.write(record)
            if is_main:
              print(f"step {step + 1}/{total} (sft): loss {record['sft_loss']:.4f}", flush=True)
        else:
          state, record = _rl_step(program, state, task, tok, stop_id, config, step)
          log.write(record)
          rl_done = step + 1 - rc.sft_steps
          if is_main and (rl_done % tc.log_interval == 0 or step + 1 == total or rl_done == 1):
            print(f"step {step + 1}/{total}: reward {record['reward']:.3f}, length "
                  f"{record['response_length']:.2f}, kl {record['kl']:.4f}, clip "
                  f"{record['clip_fraction']:.3f}, entropy {record['entropy']:.3f}, no signal "
                  f"{record['no_signal_fraction']:.2f}, ratio mismatch "
                  f"{record['ratio_mismatch']:.1e}, rollout {record['rollout_s']:.2f}s, update "
                  f"{record['update_s']:.2f}s", flush=True)
        done = step + 1
        if done % tc.checkpoint_every == 0 or done == total or stop.signum:
          checkpoint.save(manager, state, meta)
        if stop.signum:
          manager.wait_until_finished()
          raise signals.Interrupted(stop.signum, done, workdir)
  finally:
    manager.wait_until_finished()
    manager.close()
    log.close()
  if is_main:
    rewards = [r["reward"] for r in read_metrics(log.path) if "reward" in r]
    summary = {"step": total, "params": int(n_params), "task": task.name,
               "reward_first": rewards[0] if rewards else None,
               "reward_last": rewards[-1] if rewards else None,
               "reward_last_10": float(np.mean(rewards[-10:])) if rewards else None}
    write_json(os.path.join(workdir, workdir_lib.SUMMARY_FILE), summary)
    print(f"llm-jax rl: done at step {total}: reward {summary['reward_first']} at the first RL "
          f"step, {summary['reward_last_10']} over the last 10 ({workdir})", flush=True)
    return summary
  return {"step": total}


def _check_finished_unchanged(config, saved, workdir) -> None:
  """A finished run (summary.json at its last step) run again with another switch would train
  nothing and look like a run of that switch: refused, as `llm-jax train` refuses it
  (training/record.py). Raising train.max_steps continues it."""
  if not workdir_lib.is_finished(workdir, config.rl.sft_steps + config.train.max_steps):
    return
  changed = [f for f in workdir_lib.changed_fields(config, saved) if f != "train.max_steps"]
  if changed:
    def value(c, field):
      for name in field.split("."):
        c = c.get(name) if c is not None else None
      return c
    new, old = value(config, changed[0]), value(saved, changed[0])
    raise UserError(f"{workdir} is a finished RL run, and config.{changed[0]}={new!r} differs "
                    f"from its {old!r}: re-running it trains nothing; raise "
                    f"--config.train.max_steps to continue it (with its own config), or use a "
                    f"fresh --workdir")


def _rl_step(program, state, task, tok, stop_id, config, step):
  """One RL step: rollouts, rewards, the update. (state, its metrics.jsonl record)."""
  rc = config.rl
  t0 = time.perf_counter()
  batch, rewards, completions = rollouts(program, state, task, tok, stop_id, config, step)
  t1 = time.perf_counter()
  state, m = program.rl_step(state, batch)
  m = {k: float(v) for k, v in jax.device_get(m).items()}
  t2 = time.perf_counter()
  r_PG = rewards.reshape(-1, rc.group_size)
  n_new = sum(len(c.tokens) for c in completions)
  B, T = batch["tokens"].shape
  record = {"step": step + 1, "reward": float(rewards.mean()),
            f"reward/{task.name}": float(rewards.mean()),
            "response_length": n_new / len(completions),
            "stop_fraction": float(np.mean([c.finish_reason == "stop" for c in completions])),
            "no_signal_fraction": float(np.mean(np.all(r_PG == r_PG[:, :1], axis=1))),
            **m, "rollout_s": t1 - t0, "update_s": t2 - t1,
            "rollout_tokens_per_s": n_new / (t1 - t0),
            "update_tokens_per_s": B * T * config.train.rl_epochs / (t2 - t1)}
  return state, record
