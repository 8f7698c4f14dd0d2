"""The experiment config: every field with its default and meaning, and its validation.

configs/*.py start from `default_config()` and change what their experiment needs. `validate` runs
before anything is loaded or compiled and raises a UserError naming the field and the fix.
"""

import importlib.util
import pathlib

import ml_collections

from llm_jax.data.bpe import MIN_VOCAB_SIZE
from llm_jax.data.corpora import CORPORA
from llm_jax.data.seq2seq import SEQ2SEQ_TASKS, distinct_sources, longest_example
from llm_jax.data.tokenizers import NORMALIZATIONS, TIKTOKEN_ENCODINGS, bpe_path
from llm_jax.errors import UserError
from llm_jax.models import FAMILIES
from llm_jax.models.dropout import BITS as DROPOUT_BITS
from llm_jax.models.layers import ACTIVATIONS, REMAT_POLICIES, WINDOW_LETTERS
from llm_jax.rl.losses import IMPORTANCES, LOSS_NORMS
from llm_jax.rl.tasks import TASKS as RL_TASKS
from llm_jax.training import workdir
from llm_jax.training.optimizer import OPTIMIZERS, SCHEDULES


def default_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  # seed of parameter init, dropout and the batch stream (0 .. 2^63 - 1); a run is a function of
  # (config, seed)
  c.seed = 1337
  # how the steps run over the devices: 'auto' (jax.jit over a device mesh of every device,
  # shaped by config.mesh) | 'none' (one device) | 'pmap' (jax.pmap data parallelism, a replica of
  # the state per device). train.batch_size is global: split over the mesh's data x fsdp devices
  c.parallel = "auto"
  # the device mesh of parallel='auto' (training/sharding.py): its axes' sizes, whose product is
  # the device count; -1 on one axis takes the devices left over. A run resumes on any mesh
  c.mesh = ml_collections.ConfigDict()
  # data parallelism: the batch split, parameters replicated
  c.mesh.data = -1
  # fully sharded data parallelism: the batch split, and every matrix and embedding split along
  # the model width (parameters, gradients and Adam moments: 1/fsdp each per device)
  c.mesh.fsdp = 1
  # tensor parallelism: attention heads, FFN hidden units and the vocabulary split (Megatron)
  c.mesh.tensor = 1
  # expert parallelism (model.moe_experts > 0): the experts split over this many devices (it
  # must divide moe_experts), the batch split over them too
  c.mesh.expert = 1
  # CPU only: host devices that split each batch (with parallel='auto'), from the command line,
  # before JAX starts. XLA runs most of a small model's ops on one core, so one device per core
  # steps faster (experiments/perf). 0: one per core when train.batch_size divides by the core
  # count, else 1. XLA_FLAGS=--xla_force_host_platform_device_count, when set, wins
  c.cpu_devices = 0
  # several processes (hosts) through jax.distributed; the LLM_JAX_COORDINATOR_ADDRESS,
  # LLM_JAX_NUM_PROCESSES and LLM_JAX_PROCESS_ID environment variables override these
  c.distributed = ml_collections.ConfigDict()
  # host:port of process 0's coordinator ('' with one process)
  c.distributed.coordinator_address = ""
  # number of processes taking part (1: no jax.distributed)
  c.distributed.num_processes = 1
  # this process's index, 0..num_processes-1
  c.distributed.process_id = 0

  c.data = ml_collections.ConfigDict()
  # corpus: 'shakespeare_plays' (offline, the default) | 'tinyshakespeare' (downloaded) | 'text_file'
  # | 'prepared' (a directory made by `llm-jax prepare`: token shards read through memory maps,
  # for corpora larger than memory; its tokenizer is the dataset's, see data/prepared.py). The
  # text corpora are prepared alike into data_dir at their first use (the first 90% of the
  # characters train, the rest validate) and read the same way
  c.data.corpus = "shakespeare_plays"
  # corpus 'chat' (data/chat.py, training/sft.py): data.path is a JSONL of conversations,
  # {"messages": [{"role": "system"|"user"|"assistant", "content": ...}]}, packed into rows;
  # loss_on: which tokens the loss counts, 'assistant' (each assistant message's content and its
  # end token) | 'all'
  c.data.loss_on = "assistant"
  # text_file: a UTF-8 file or glob; tinyshakespeare: a local copy ('' downloads it); prepared:
  # the dataset's directory
  c.data.path = ""
  # how training windows are drawn, both from (seed, step) alone: 'random' (window starts with
  # replacement) | 'epoch' (every window of block_size tokens once per epoch, in a seeded order
  # that is computed, not stored; any corpus but 'chat')
  c.data.sampling = "random"
  # prepared: how rows meet documents (each starts with the end-of-text token; data/packing.py):
  # 'none' (windows cut anywhere, a token attends across into the previous document) | 'bos'
  # (every row starts at a document start, filled best-fit with whole documents, the one that
  # does not fit cropped to the row's end, as nanochat; the cropped tails are discarded and the
  # start-of-run line says what fraction) | 'doc_mask' (bos rows, and each token attends only
  # within its document, positions restarting at each one). bos and doc_mask: sampling 'random'
  c.data.packing = "none"
  # text_file: the most bytes of text read into memory (tokenizing takes ~16x the text); past it
  # the run stops and points to `llm-jax prepare`. 0: a sixteenth of the available memory
  c.data.max_text_bytes = 0
  # downloads and prepared text corpora; '' means $LLM_JAX_DATA_DIR, else ~/.cache/llm_jax
  c.data.data_dir = ""
  # tokenizer: 'char' (vocabulary = the corpus's characters) | 'tiktoken:<encoding>' (cl100k_base
  # works offline; gpt2, r50k_base, p50k_base, o200k_base need network or TIKTOKEN_CACHE_DIR) |
  # 'bpe:<rank file>' (made by `llm-jax bpe`; relative: to the working dir, else the data dir) |
  # 'bpe:train:<vocab size>' (a BPE trained on the training split, cached in the data dir) |
  # 'hf:<tokenizer.json>' (a Hugging Face tokenizer file: a converted checkpoint's, the hf extra)
  c.data.tokenizer = "char"
  # Unicode normalization of the corpus (and the seq2seq pairs file) and of prompts: 'NFC' (one
  # code point for an 'é' however the text spells it) | 'NFKC' | 'NFD' | 'NFKD' | 'none' (the text
  # as it is) | 'auto': NFC for the character tokenizers (a prompt spelling a character otherwise
  # than the corpus is not refused), none for byte-level BPE (any text encodes; tiktoken's ids
  # stay tiktoken's). The tokenizer saved with a run keeps it, so `generate` normalizes alike
  c.data.normalize = "auto"
  # seq2seq task of model 'transformer' (character level; '' for language models): 'copy' |
  # 'reverse' (strings of a-z) | 'sort' (digits) | 'add' ('a+b' -> the sum's digits) |
  # 'pairs_file' (source<TAB>target lines of the UTF-8 file data.path)
  c.data.task = ""
  # generated tasks: shortest and longest source, in symbols (add: digits of each operand)
  c.data.min_length = 1
  c.data.max_length = 8
  # generated tasks: distinct examples drawn from the seed, before the split
  c.data.num_examples = 20000
  # seq2seq: distinct sources held out for val and again for test; the rest trains
  c.data.heldout_examples = 500

  c.model = ml_collections.ConfigDict()
  # model family: 'gpt' | 'bigram' | 'transformer' (encoder-decoder, for the seq2seq data.task)
  c.model.name = "gpt"
  # rows of the token embedding (and of the untied head): 0 means the tokenizer's vocabulary;
  # more pads it (a checkpoint's own size, or a multiple of 64 for faster matmuls): the extra ids
  # are never targets, and decode to nothing
  c.model.vocab_size = 0
  # context length: training windows are block_size tokens; generation conditions on the last block_size
  # (transformer: the longest source, and the longest target + 1, as BOS or EOS is added to it)
  c.model.block_size = 64
  # size of the positional table (>= block_size); 0 means block_size
  c.model.max_len = 0
  # number of transformer blocks (transformer: in the encoder, and again in the decoder)
  c.model.n_layer = 4
  # attention heads per block (n_embd must divide by it)
  c.model.n_head = 4
  # model width C
  c.model.n_embd = 128
  # key/value heads of each attention, shared by groups of query heads (grouped-query attention;
  # the KV cache holds only these): 0 means n_head (multi-head, one fused QKV projection), 1 is
  # multi-query; n_head must divide by it
  c.model.n_kv_head = 0
  # dropout on embeddings, attention weights and residual branches (0 turns it off)
  c.model.dropout = 0.0
  # random bits deciding each element's drop: 8 (four elements per 32-bit random word, the rate
  # rounded to a multiple of 1/256, the keep scale exact) | 16 (the rate to 1/65536) | 32
  # (jax.random.bernoulli's float uniforms); drawing the masks is most of dropout's cost
  c.model.dropout_bits = 8
  # norm placement: 'pre' (x + f(LN(x)), GPT-2) | 'post' (LN(x + f(x)), the original Transformer)
  c.model.norm = "pre"
  # the norm: 'layernorm' (GPT-2; with use_bias a bias) | 'rmsnorm' (scale only, as Llama)
  c.model.norm_type = "layernorm"
  # epsilon of every norm (and of qk_norm): PyTorch's LayerNorm default, as GPT-2; Llama
  # checkpoints often use 1e-6 (their config.json's rms_norm_eps)
  c.model.norm_eps = 1e-5
  # positional encoding: 'learned' (a table, GPT-2) | 'sinusoidal' (fixed, the original
  # Transformer) | 'rope' (rotary: the self-attentions rotate queries and keys by position, as
  # Llama; head size n_embd / n_head even) | 'none' (NoPE: a causal model tells positions apart by
  # its mask alone; not the transformer, whose encoder would see its source as a bag)
  c.model.pos = "learned"
  # pos='rope': the base of the rotation frequencies, position / rope_theta^(2i/head size)
  c.model.rope_theta = 10000.0
  # FFN activation: 'gelu' (exact, erf: nanoGPT) | 'gelu_tanh' (the tanh approximation, GPT-2's
  # own 'gelu_new') | 'relu' (the original Transformer) | 'swiglu' (SiLU-gated, Llama) | 'geglu'
  # (GELU-gated); the gated ones have a gate and an up projection
  c.model.activation = "gelu"
  # the FFN's hidden width; 0: 4 n_embd, or for the gated activations 8 n_embd / 3 rounded up to a
  # multiple of 64 (about the parameters of the 4 n_embd one, Llama's rule)
  c.model.ffn_hidden = 0
  # RMSNorm on each head's queries and keys (before the rotary positions), as OLMo 2 and Qwen3
  c.model.qk_norm = False
  # share the token embedding with the output head
  c.model.tie_embeddings = True
  # transformer: one embedding table for source and target tokens (their vocabulary is one)
  c.model.share_embeddings = True
  # gpt: multiply the token embeddings by sqrt(n_embd) before positions are added, as Vaswani et
  # al. (the transformer always does, and refuses True). With nanoGPT's 0.02 init, unit sinusoids
  # swamp the tokens unless this is on (experiments/positions)
  c.model.scale_embeddings = False
  # biases in Dense and LayerNorm layers (nanoGPT's shakespeare_char config has none)
  c.model.use_bias = False
  # the matmuls' inputs: 'float32' | 'bfloat16' (rounded to bf16, accumulated in f32; parameters,
  # norms, softmax, activations and loss stay float32) | 'auto': bfloat16 where this machine's
  # measured bf16 matmul peak is at least 1.5x its f32 one (measured once, cached), else float32,
  # decided when the run is created; its config.json keeps the concrete dtype, so a resume on
  # any machine keeps it (peaks.fix_run_dtype)
  c.model.dtype = "auto"
  # every attention's implementation: 'einsum' (the formula written out) | 'dot_product'
  # (jax.nn.dot_product_attention, a fused kernel where the backend has one; with dropout in
  # training the einsum path runs)
  c.model.attention = "einsum"
  # the blocks of each stack as one nn.scan (one block compiled, parameters stacked on a layer
  # axis) instead of a Python loop: compile time and program size stop growing with n_layer, at
  # the cost of XLA fusing across layers (speed on each side is measured in experiments/perf).
  # Checkpoints of one layout do not load into the other
  c.model.scan_layers = False
  # activation checkpointing (rematerialization) of every Block while training: 'none' (the
  # backward pass reads what the forward one kept) | 'full' (each Block keeps only its input and
  # recomputes the rest in the backward pass: the least memory, about one more forward pass of
  # compute) | a jax.checkpoint policy: 'dots_saveable' (the matmuls' outputs kept, the
  # elementwise ops recomputed) | 'dots_with_no_batch_dims_saveable' (the weight matmuls' outputs
  # kept, the attention's recomputed) | 'nothing_saveable' (= 'full'). The README says which to
  # choose when a model does not fit; `llm-jax bench` reports the step's temporaries
  c.model.remat = "none"
  # -- the speedrun switches (docs/speedrun.md: what each is, where it comes from, its tests) --
  # sliding-window attention: each token attends to at most the last attn_window tokens (0: full
  # causal). A windowed model with pos 'rope' or 'none' decodes past block_size with a ring-
  # buffer KV cache (Mistral; Gemma 2, gpt-oss and modded-nanogpt alternate window sizes)
  c.model.attn_window = 0
  # which layers are local (windowed, 'L') and which global ('G'), repeating over the layers:
  # 'LLLG' = three local, one global, ... ('' = every layer local). Needs attn_window > 0 when
  # it holds an 'L'; a global layer sees all of block_size (past it, decoding: the last max_len)
  c.model.window_pattern = ""
  # logit soft-capping: logits -> cap * tanh(logits / cap), in (-cap, cap) (0: off; Gemma 2's
  # final cap is 30, modded-nanogpt's 15, nanochat's 15)
  c.model.logit_softcap = 0.0
  # the projections that write into the residual stream (attention 'out', FFN 'proj') start at
  # zero, so each block starts as the identity (modded-nanogpt, nanochat)
  c.model.zero_init_proj = False
  # value embeddings (modded-nanogpt's records): min(3, n_layer // 2) extra token-embedding tables,
  # table j added to the values of layer j and of layer n_layer - k + j, times a learned scalar
  # per layer (init 0.5). GPT without scan_layers
  c.model.value_embeddings = False
  # U-net skips (modded-nanogpt): the outputs of the first n_layer // 2 layers, times learned
  # weights (init 1), added to the inputs of the last n_layer // 2 in mirror order. GPT without
  # scan_layers
  c.model.unet_skips = False
  # mixture of experts (models/moe.py, docs/moe.md): the number of experts of each sparse FFN
  # (0: every FFN dense, as before)
  c.model.moe_experts = 0
  # experts each token is sent to (at most moe_experts)
  c.model.moe_top_k = 2
  # always-on experts beside the routed ones (DeepSeek, Qwen2-MoE): one dense FFN of this many
  # experts' width
  c.model.moe_shared_experts = 0
  # each expert's hidden width; 0: the dense FFN's (ffn_hidden) divided by moe_top_k, which keeps
  # the active parameters those of the dense model
  c.model.moe_expert_hidden = 0
  # which layers are sparse: every moe_every-th one from layer moe_first_dense on (0-based; the
  # layers before it dense, as DeepSeek's first ones)
  c.model.moe_every = 1
  c.model.moe_first_dense = 0
  # the router: 'softmax' (the top-k of a softmax: Mixtral, Qwen) | 'sigmoid' (the top-k of
  # sigmoid scores, their weights normalized to sum to 1: DeepSeek-V3)
  c.model.moe_router = "softmax"
  # softmax: the top-k weights renormalized to sum to 1 (Mixtral, Qwen3-MoE's norm_topk_prob);
  # False keeps the softmax's own (Switch, Qwen1.5-MoE)
  c.model.moe_renormalize = True
  # 0: dropless (every token reaches its experts); > 0: each expert takes at most this factor x
  # its fair share of the tokens (GShard, Switch), the rest dropped and counted (moe_dropped)
  c.model.moe_capacity_factor = 0.0
  # dropless dispatch: 'ragged' (tokens sorted by expert, jax.lax.ragged_dot, a grouped matmul)
  # | 'blocks' (each expert a block of every token's size, one batched matmul: E/k times the
  # FLOPs, yet faster on a CPU, docs/moe.md). A capacity factor > 0 needs 'blocks'
  c.model.moe_dispatch = "ragged"

  c.train = ml_collections.ConfigDict()
  # examples per micro-batch, global across devices; one update sees batch_size * grad_accum_steps
  c.train.batch_size = 12
  # micro-batches whose gradients are averaged before each update (the global batch grows with it)
  c.train.grad_accum_steps = 1
  # optimizer updates in the whole run
  c.train.max_steps = 2000
  # peak learning rate, reached after the warmup
  c.train.learning_rate = 1e-3
  # learning rate at the end of the decay and after it
  c.train.min_lr = 1e-4
  # linear warmup steps (nanoGPT: lr * (step + 1) / (warmup + 1)), before every schedule; a run
  # no longer than its warmup (lr_decay_steps <= warmup_steps, both left to follow max_steps)
  # warms up over the whole run, and says so
  c.train.warmup_steps = 100
  # the learning rate after the warmup (training/optimizer.py): 'cosine' (nanoGPT: a half cosine
  # to min_lr at lr_decay_steps) | 'linear' (a straight line to min_lr) | 'wsd' (warmup-stable-
  # decay: learning_rate until the last decay_fraction of the steps, then linearly to min_lr) |
  # 'constant' (learning_rate to the end; min_lr unread)
  c.train.schedule = "cosine"
  # schedule='wsd': the fraction of the steps after the warmup (up to lr_decay_steps) that
  # decays; 0.2 is MiniCPM's and Hägele et al.'s usual choice
  c.train.decay_fraction = 0.2
  # step at which the cosine decay reaches min_lr. By default train.max_steps, tied by an
  # ml_collections FieldReference: setting max_steps (in a config file, on the command line, in a
  # sweep) moves it too, unless lr_decay_steps is set itself
  c.train.lr_decay_steps = c.train.get_ref("max_steps").identity()
  # AdamW decoupled weight decay, on weights and embeddings, never on biases and norm scales
  # (told apart by name, training/optimizer.py)
  c.train.weight_decay = 0.1
  # AdamW betas (lion: its two interpolation factors, the paper's 0.9 and 0.99 by default;
  # muon: those of the AdamW on the embeddings, head, norms and biases; adafactor: unread)
  c.train.beta1 = 0.9
  c.train.beta2 = 0.99
  # the update rule (training/optimizer.py): 'adamw' | 'lion' (sign of momentum: a learning rate
  # 3-10x below AdamW's, a weight decay as much above) | 'adafactor' (factored second moment, no
  # momentum) | 'muon' (orthogonalized momentum for the blocks' matrices, AdamW for the rest) |
  # 'sgd' (momentum). Weight decay is decoupled and masked by name for all of them. A run
  # resumes with the optimizer it was started with
  c.train.optimizer = "adamw"
  # sgd and muon: the momentum (Muon's 0.95; SGD's usual 0.9)
  c.train.momentum = 0.95
  # sgd and muon: Nesterov momentum
  c.train.nesterov = True
  # muon: Newton-Schulz iterations orthogonalizing each matrix's momentum (optax's quintic
  # coefficients 3.4445, -4.7750, 2.0315, Jordan's)
  c.train.muon_ns_steps = 5
  # muon: each orthogonalized (in x out) update is scaled by sqrt(max(in, out)) x this, an RMS
  # like AdamW's (Liu et al. 2025, Moonlight: 0.2), so that AdamW's learning rate and weight
  # decay carry over; 0 scales by sqrt(max(1, out / in)) instead (Jordan's), which wants a
  # learning rate near 0.02 and the AdamW part about a tenth of it (muon_adam_lr_ratio)
  c.train.muon_consistent_rms = 0.2
  # muon: the learning rate of the AdamW part (embeddings, head, norms, biases) as a multiple of
  # the scheduled learning rate
  c.train.muon_adam_lr_ratio = 1.0
  # per-group peak learning rates (nanochat, modded-nanogpt: embeddings high, head low, Muon on
  # the matrices), each following train.schedule scaled by rate / learning_rate: embed_lr for
  # the embedding tables (the token one, and model.value_embeddings'; a tied head is the token
  # table), head_lr for an untied head. 0: the group keeps the rate it has today
  # (learning_rate, x muon_adam_lr_ratio under muon)
  c.train.embed_lr = 0.0
  c.train.head_lr = 0.0
  # clip gradients to this global norm (0 turns clipping off)
  c.train.grad_clip = 1.0
  # evaluate every this many steps (and at step 0 and at the end)
  c.train.eval_interval = 250
  # batches averaged per evaluation, on train and on val (fixed batches, so evaluations compare)
  c.train.eval_iters = 20
  # write metrics.jsonl and refresh the progress bar every this many steps
  c.train.log_interval = 10
  # where stdout is not a terminal (a SLURM job's log, CI, a sweep's train.log; tqdm's bar draws
  # nothing there): a plain progress line (step/total, loss, tokens/s, elapsed, ETA) at the first
  # log step this many seconds after the previous line (0: at every log step)
  c.train.log_seconds = 30.0
  # save a checkpoint every this many steps (and at the end)
  c.train.checkpoint_every = 500
  # checkpoints kept on disk (the newest ones)
  c.train.keep_checkpoints = 2
  # tokens sampled from the trained model at the end of the run (0: none); each evaluation also
  # writes a sample of at most 100 tokens to TensorBoard
  c.train.sample_tokens = 300
  # a NaN or inf loss or gradient norm: 'stop' (the run ends naming the step; the last good
  # checkpoint is kept) | 'skip' (an update whose gradients are not all finite is dropped, by
  # optax.apply_if_finite, and counted, as skipped_updates)
  c.train.nan_policy = "stop"
  # mixture of experts (model.moe_experts > 0): the coefficient of the Switch/GShard load-balancing
  # loss E sum_e f_e P_e per sparse layer (Switch: 0.01; 0 = off)
  c.train.moe_aux_loss = 0.0
  # the coefficient of the router z-loss mean(logsumexp(logits)^2) per sparse layer (ST-MoE:
  # 0.001; 0 = off)
  c.train.moe_z_loss = 0.0
  # DeepSeek-V3's auxiliary-loss-free balancing: each expert's selection bias moves by this much
  # toward equal load after every step (DeepSeek: 0.001; 0 = off). Saved in the checkpoints
  c.train.moe_bias_rate = 0.0
  # fine-tuning: a run directory (trained here, or made by `llm-jax convert`) whose latest
  # parameters and tokenizer start this run, with a fresh optimizer at step 0; '' starts from a
  # fresh init. Its model must be this config's (configs/finetune.py:<run> builds one from it)
  c.train.init_from = ""
  # downstream evaluation during training (harness.py; the [eval] extra): lm-eval task names,
  # comma-separated ('' = off), scored at evaluations; their metrics go to metrics.jsonl and
  # TensorBoard as harness/<task>/<metric>, and into a sweep's results
  c.train.harness_tasks = ""
  # items per harness task (0 = all of them)
  c.train.harness_limit = 0
  # a folder of local lm-eval task YAML files ('' = lm-eval's shipped tasks only)
  c.train.harness_include_path = ""
  # the harness runs at the evaluations whose step is a multiple of this, and at the last
  # (0 = at every evaluation)
  c.train.harness_every = 0
  # `llm-jax rl`: policy-gradient updates (passes) over each batch of rollouts before new ones
  # are sampled; past the first, the policy is off the sampler's and the clip range matters
  c.train.rl_epochs = 1

  # `llm-jax rl` (llm_jax/rl, docs/rl.md): reinforcement learning with verifiable rewards, GRPO
  # (Shao et al. 2024, DeepSeekMath) and its variants. Each step samples group_size completions
  # for each of prompts_per_step prompts, scores them with the task's verifier, normalizes the
  # rewards within each group and takes train.rl_epochs clipped policy-gradient updates
  c.rl = ml_collections.ConfigDict()
  # the task: 'arithmetic' (word problems from the seed, operands 0-9, or 0-N with
  # 'arithmetic:N'; exact-answer reward) | 'speaker' (name the speaker of a line of the plays) |
  # 'path/to/task.py[:factory]' (a user's task: its get_task(seed) returns a
  # llm_jax.rl.tasks.Task). A config that names a task is an RL config (is_rl): `llm-jax sweep`
  # runs its points as `llm-jax rl` runs, and `llm-jax train` refuses it. '' (the default): none
  c.rl.task = ""
  # completions sampled per prompt (G >= 2: the advantages are relative within a group)
  c.rl.group_size = 8
  # prompts per step; the batch is prompts_per_step * group_size rows
  c.rl.prompts_per_step = 8
  # the longest completion, in tokens (prompt + completion must fit model.block_size)
  c.rl.max_new_tokens = 4
  # sampling temperature of the rollouts (the log-probs are the temperature-1 policy's either way)
  c.rl.temperature = 1.0
  # the loss's normalization: 'sequence' (GRPO: each completion's mean over its tokens, then the
  # mean over completions) | 'token' (DAPO, Yu et al. 2025; Dr. GRPO, Liu et al. 2025: the sum
  # over all tokens / their count, so long completions are not down-weighted per token)
  c.rl.loss_norm = "sequence"
  # the clip range of the ratio, [1 - clip_low, 1 + clip_high] (PPO, Schulman et al. 2017: 0.2
  # both; DAPO's clip-higher raises clip_high, e.g. 0.28, to keep exploring)
  c.rl.clip_low = 0.2
  c.rl.clip_high = 0.2
  # weight of the KL penalty to a frozen reference policy, by the k3 estimator (Schulman 2020)
  # as GRPO; 0: none (DAPO, Dr. GRPO drop it). The reference is the policy RL starts from (the
  # train.init_from run, or the model after rl.sft_steps), kept in the checkpoints
  c.rl.kl_coef = 0.0
  # divide each group's centred rewards by their std (GRPO); False: centred only (Dr. GRPO)
  c.rl.std_normalize = True
  # the policy ratio: 'token' (per token, PPO/GRPO) | 'sequence' (GSPO, Zheng et al. 2025: one
  # ratio per completion, the geometric mean of its tokens'; use a small clip range, 3e-4..4e-4
  # in the paper)
  c.rl.importance = "token"
  # groups whose rewards are all equal (no signal) get weight 0 in the loss, DAPO's dynamic
  # sampling without the refill: the batch is smaller instead of resampled
  c.rl.skip_equal_groups = False
  # supervised steps on the task's demonstrations (train.batch_size prompts each) before RL, to
  # teach a fresh model the answer format; counted before train.max_steps RL steps
  c.rl.sft_steps = 0
  # the RL updates' learning rate as a multiple of the schedule's (train.learning_rate ...): RL
  # wants a smaller one than the supervised steps before it (rl.sft_steps, which take 1x)
  c.rl.lr_scale = 1.0
  return c


def with_defaults(d: dict, defaults: dict | None = None) -> dict:
  """A config dict written by an older version (a run's JSON) with the fields it lacks at their
  defaults, so it validates and compares like a config made now (training/workdir.py's)."""
  return workdir.with_defaults(d, default_config().to_dict() if defaults is None else defaults)


def _require(cond, field, value, fix):
  if not cond:
    raise UserError(f"config.{field}={value!r} is invalid: {fix}")


def _validate_task(d, m) -> None:
  """A model of the seq2seq kind learns a seq2seq data.task; the language models learn a corpus."""
  tasks = ", ".join(repr(t) for t in SEQ2SEQ_TASKS)
  if FAMILIES[m.name].task == "lm":
    seq2seq = " or ".join(repr(n) for n, f in FAMILIES.items() if f.task == "seq2seq")
    _require(d.task == "", "data.task", d.task,
             f"model.name={m.name!r} is a language model: use '' (or model.name={seq2seq})")
    return
  _require(d.task in SEQ2SEQ_TASKS, "data.task", d.task,
           f"model {m.name!r} learns a seq2seq task: use one of {tasks}")
  _require(d.tokenizer == "char", "data.tokenizer", d.tokenizer,
           "seq2seq tasks are character-level: use 'char'")
  _require(d.heldout_examples > 0, "data.heldout_examples", d.heldout_examples,
           "use a positive number (of val and of test examples)")
  if d.task == "pairs_file":
    _require(d.path != "", "data.path", d.path,
             "task 'pairs_file' reads source<TAB>target lines: pass --config.data.path=pairs.tsv")
    return
  _require(d.min_length >= 1, "data.min_length", d.min_length, "use 1 or more")
  _require(d.max_length >= d.min_length, "data.max_length", d.max_length,
           f"use at least data.min_length={d.min_length}")
  _require(d.num_examples > 2 * d.heldout_examples, "data.num_examples", d.num_examples,
           f"use more than 2 x data.heldout_examples={d.heldout_examples} (val and test), "
           f"so that some examples train")
  distinct = distinct_sources(d.task, min(d.min_length, 64), min(d.max_length, 64))  # (enough)
  _require(d.num_examples <= distinct, "data.num_examples", d.num_examples,
           f"task {d.task!r} has {distinct} distinct examples with lengths "
           f"{d.min_length}..{d.max_length}: lower it, or widen data.min_length..data.max_length")
  source, target = longest_example(d.task, d.max_length)
  _require(source <= m.block_size and target + 1 <= m.block_size, "data.max_length", d.max_length,
           f"task {d.task!r}'s longest source has {source} characters and its target {target} "
           f"(+1 for BOS/EOS), more than model.block_size={m.block_size} holds: lower "
           f"data.max_length or raise model.block_size")


def _validate_harness(t, m) -> None:
  _require(t.harness_limit >= 0, "train.harness_limit", t.harness_limit, "use 0 (all) or more")
  _require(t.harness_every >= 0, "train.harness_every", t.harness_every,
           "use 0 (every evaluation) or a positive number of steps")
  if not t.harness_tasks.strip(" ,"):
    return
  _require(FAMILIES[m.name].task == "lm", "train.harness_tasks", t.harness_tasks,
           f"lm-eval scores language models; model {m.name!r} is an encoder-decoder: use ''")
  _require(importlib.util.find_spec("lm_eval") is not None, "train.harness_tasks",
           t.harness_tasks, "lm-eval is not installed: pip install -e '.[eval]', or use ''")
  folder = t.harness_include_path
  _require(not folder or pathlib.Path(folder).expanduser().is_dir(), "train.harness_include_path",
           folder, "no such folder: pass a folder of lm-eval task YAML files, or ''")


def validate(c) -> None:
  """Every field checked, section by section: the first bad value is a UserError naming it."""
  _validate_run(c)
  _validate_data(c.data)
  _validate_model(c.model, c.data, c.train)
  _require(c.model.moe_experts == 0 or c.mesh.expert <= 1 or
           c.model.moe_experts % c.mesh.expert == 0, "mesh.expert", c.mesh.expert,
           f"it must divide model.moe_experts={c.model.moe_experts} (each device holds "
           f"moe_experts / expert of them)")
  _validate_train(c.train)
  _validate_harness(c.train, c.model)
  _validate_rl(c.rl, c.train)


def _validate_run(c) -> None:
  # (numpy's generators take non-negative seeds: each batch is drawn from [seed, stream, step])
  _require(0 <= c.seed < 2**63, "seed", c.seed, "use a non-negative 64-bit integer (0, 1, 2, ...)")
  _require(c.cpu_devices >= 0, "cpu_devices", c.cpu_devices, "use 0 (one per core) or more")
  _require(c.parallel in ("auto", "none", "pmap"), "parallel", c.parallel,
           "use 'auto', 'none' or 'pmap'")
  _require(c.distributed.num_processes >= 1, "distributed.num_processes",
           c.distributed.num_processes, "use 1 or more")


def _validate_data(d) -> None:
  _require(d.corpus in CORPORA, "data.corpus", d.corpus, f"use one of {', '.join(CORPORA)}")
  _require(d.sampling in ("random", "epoch"), "data.sampling", d.sampling,
           "use 'random' or 'epoch'")
  _require(d.sampling == "random" or d.corpus != "chat", "data.sampling", d.sampling,
           "conversations are packed in a seeded order of their own; use 'random'")
  _require(d.corpus != "prepared" or d.path != "", "data.path", d.path,
           "corpus 'prepared' reads a directory made by `llm-jax prepare`: pass "
           "--config.data.path=DIR")
  _require(d.packing in ("none", "bos", "doc_mask"), "data.packing", d.packing,
           "use 'none', 'bos' or 'doc_mask'")
  _require(d.packing == "none" or d.corpus == "prepared", "data.packing", d.packing,
           "rows are aligned to the documents of a prepared dataset (--config.data.corpus="
           "prepared); use 'none'")
  _require(d.packing == "none" or d.sampling == "random", "data.packing", d.packing,
           "packed rows are drawn at random: use --config.data.sampling=random, or packing 'none'")
  _require(d.corpus != "chat" or d.path != "", "data.path", d.path,
           "corpus 'chat' reads a JSONL of conversations: pass --config.data.path=FILE.jsonl")
  _require(d.loss_on in ("assistant", "all"), "data.loss_on", d.loss_on,
           "use 'assistant' (the assistant's tokens) or 'all'")
  _require(d.max_text_bytes >= 0, "data.max_text_bytes", d.max_text_bytes,
           "use 0 (from the available memory) or a number of bytes")
  _require(d.normalize in ("auto", "none") + NORMALIZATIONS, "data.normalize", d.normalize,
           f"use 'auto', 'none' or one of {', '.join(NORMALIZATIONS)}")
  kind, _, arg = d.tokenizer.partition(":")
  _require(d.tokenizer == "char" or (kind in ("tiktoken", "bpe", "hf") and arg), "data.tokenizer",
           d.tokenizer, "use 'char', 'tiktoken:<encoding>', 'bpe:<rank file>', "
           "'bpe:train:<vocab size>' or 'hf:<tokenizer.json>'")
  if kind == "tiktoken":
    _require(arg in TIKTOKEN_ENCODINGS, "data.tokenizer", d.tokenizer,
             f"use one of {', '.join('tiktoken:' + n for n in TIKTOKEN_ENCODINGS)}")
  elif kind == "bpe" and arg.startswith("train:"):
    n = arg.removeprefix("train:")
    _require(n.isdigit() and int(n) >= MIN_VOCAB_SIZE, "data.tokenizer", d.tokenizer,
             f"use bpe:train:<vocab size>, a size of at least {MIN_VOCAB_SIZE} (such as 4096)")
  elif kind == "bpe" and arg:
    path = bpe_path(arg, d.data_dir)
    _require(path.is_file(), "data.tokenizer", d.tokenizer,
             f"no rank file at {path}" + ("" if pathlib.Path(arg).expanduser().is_absolute() else
                                          " (nor in the working directory)") +
             f": make one with `llm-jax bpe --corpus=<text files> --vocab_size=4096 "
             f"--out={path}`, or use bpe:train:4096")
  elif kind == "hf":
    _require(pathlib.Path(arg).expanduser().is_file(), "data.tokenizer", d.tokenizer,
             f"no file at {pathlib.Path(arg).expanduser().absolute()}: pass the path of a Hugging "
             f"Face tokenizer.json")


def _validate_model(m, d, t) -> None:
  _require(m.name in FAMILIES, "model.name", m.name, f"use one of {', '.join(FAMILIES)}")
  _validate_task(d, m)
  defaults = default_config().model
  for field, why in FAMILIES[m.name].unread.items():
    _require(m[field] == defaults[field], f"model.{field}", m[field],
             f"model {m.name!r} does not read it ({why}): leave it at {defaults[field]!r}")
  for (field, value), why in FAMILIES[m.name].refuses.items():
    _require(m[field] != value, f"model.{field}", m[field], f"model {m.name!r} refuses it ({why})")
  for optimizer, why in FAMILIES[m.name].refuses_optimizers.items():
    _require(t.optimizer != optimizer, "train.optimizer", t.optimizer,
             f"model {m.name!r} cannot train with it ({why})")
  _require(m.block_size > 0, "model.block_size", m.block_size, "use a positive context length")
  for field in ("n_layer", "n_head", "n_embd"):
    _require(m[field] > 0, f"model.{field}", m[field], "use a positive size")
  _require(m.max_len >= 0, "model.max_len", m.max_len, "use 0 (= block_size) or a positive size")
  _require(m.n_embd % m.n_head == 0, "model.n_embd", m.n_embd,
           f"it must divide by model.n_head={m.n_head}")
  _require(m.max_len == 0 or m.block_size <= m.max_len, "model.block_size", m.block_size,
           f"it exceeds the positional table (model.max_len={m.max_len}): " +
           ("lower block_size (a fine-tuned model keeps its source's table, train.init_from)"
            if t.init_from else "raise max_len or lower block_size"))
  _require(0.0 <= m.dropout < 1.0, "model.dropout", m.dropout, "use a rate in [0, 1)")
  _require(m.norm in ("pre", "post"), "model.norm", m.norm, "use 'pre' or 'post'")
  _require(m.norm_type in ("layernorm", "rmsnorm"), "model.norm_type", m.norm_type,
           "use 'layernorm' or 'rmsnorm'")
  _require(m.pos in ("learned", "sinusoidal", "rope", "none"), "model.pos", m.pos,
           "use 'learned', 'sinusoidal', 'rope' or 'none'")
  head_size = m.n_embd // m.n_head
  _require(m.pos != "rope" or head_size % 2 == 0, "model.pos", m.pos,
           f"rotary positions rotate pairs of dimensions: the head size n_embd / n_head = "
           f"{head_size} must be even")
  _require(m.rope_theta > 0, "model.rope_theta", m.rope_theta, "use a positive base")
  _require(m.pos == "rope" or m.rope_theta == defaults.rope_theta, "model.rope_theta",
           m.rope_theta, f"only pos='rope' reads it: set model.pos='rope' or leave it at "
           f"{defaults.rope_theta!r}")
  _require(m.activation in ACTIVATIONS, "model.activation", m.activation,
           f"use one of {', '.join(map(repr, ACTIVATIONS))}")
  _require(m.norm_eps > 0, "model.norm_eps", m.norm_eps, "use a small positive number (1e-5)")
  _require(m.vocab_size >= 0, "model.vocab_size", m.vocab_size,
           "use 0 (the tokenizer's vocabulary) or a size at least the tokenizer's")
  _require(m.ffn_hidden >= 0, "model.ffn_hidden", m.ffn_hidden,
           "use 0 (the default width) or a positive size")
  _require(m.n_kv_head >= 0, "model.n_kv_head", m.n_kv_head,
           "use 0 (= n_head) or a positive number")
  _require(m.n_kv_head == 0 or m.n_head % m.n_kv_head == 0, "model.n_kv_head", m.n_kv_head,
           f"model.n_head={m.n_head} must divide by it (each key/value head serves "
           f"n_head / n_kv_head query heads)")
  _require(m.dtype in ("auto", "float32", "bfloat16"), "model.dtype", m.dtype,
           "use 'auto', 'float32' or 'bfloat16'")
  _require(m.dropout_bits in DROPOUT_BITS, "model.dropout_bits", m.dropout_bits,
           "use 8, 16 or 32")
  _require(round(m.dropout * 2 ** m.dropout_bits) < 2 ** m.dropout_bits, "model.dropout",
           m.dropout, f"with model.dropout_bits={m.dropout_bits} it rounds to 1: lower it or "
           f"use more bits")
  _require(m.attention in ("einsum", "dot_product"), "model.attention", m.attention,
           "use 'einsum' or 'dot_product'")
  _require(m.remat == "none" or m.remat in REMAT_POLICIES, "model.remat", m.remat,
           f"use 'none' or one of {', '.join(map(repr, REMAT_POLICIES))}")
  _validate_speedrun_model(m)
  _validate_moe(m, t)
  _require(t.head_lr == 0 or not m.tie_embeddings, "train.head_lr", t.head_lr,
           "the head is the token table (model.tie_embeddings=True), whose rate is "
           "train.embed_lr: use 0, or --config.model.tie_embeddings=False")


def _validate_speedrun_model(m) -> None:
  """The speedrun switches (docs/speedrun.md)."""
  _require(m.attn_window >= 0, "model.attn_window", m.attn_window,
           "use 0 (full causal) or a positive number of tokens")
  bad = sorted(set(m.window_pattern) - set(WINDOW_LETTERS))
  _require(not bad, "model.window_pattern", m.window_pattern,
           f"unknown letter {bad[0] if bad else ''!r}: use 'L' (local) and 'G' (global) only, "
           f"such as 'LLLG'")
  _require(m.attn_window > 0 or "L" not in m.window_pattern, "model.attn_window", m.attn_window,
           f"window_pattern={m.window_pattern!r} has local layers, whose window this is: use a "
           f"positive window (such as block_size // 2), or a pattern of 'G' only")
  _require(m.logit_softcap >= 0, "model.logit_softcap", m.logit_softcap,
           "use 0 (off) or a positive cap (such as 15)")
  for field in ("value_embeddings", "unet_skips"):
    _require(not (m[field] and m.scan_layers), f"model.{field}", m[field],
             "each layer takes its own extra input, which one scanned block cannot: set "
             "--config.model.scan_layers=False, or leave it False")


def _validate_moe(m, t) -> None:
  """The mixture-of-experts switches (models/moe.py); the MoE's loss terms of config.train too."""
  _require(m.moe_experts >= 0, "model.moe_experts", m.moe_experts, "use 0 (dense) or more")
  for field in ("moe_aux_loss", "moe_z_loss", "moe_bias_rate"):
    _require(t[field] >= 0, f"train.{field}", t[field], "use 0 (off) or a positive number")
    _require(m.moe_experts > 0 or t[field] == 0, f"train.{field}", t[field],
             "it weighs a mixture of experts: set model.moe_experts, or leave it at 0")
  if m.moe_experts == 0:
    return
  _require(m.name != "bigram", "model.moe_experts", m.moe_experts,
           "the bigram is a table of logits without an FFN: use 0, or model.name='gpt'")
  _require(1 <= m.moe_top_k <= m.moe_experts, "model.moe_top_k", m.moe_top_k,
           f"use 1 to model.moe_experts={m.moe_experts}")
  _require(m.moe_shared_experts >= 0, "model.moe_shared_experts", m.moe_shared_experts,
           "use 0 or more")
  _require(m.moe_expert_hidden >= 0, "model.moe_expert_hidden", m.moe_expert_hidden,
           "use 0 (the dense width / top_k) or a positive width")
  _require(m.moe_every >= 1, "model.moe_every", m.moe_every, "use 1 (every layer) or more")
  _require(0 <= m.moe_first_dense < m.n_layer, "model.moe_first_dense", m.moe_first_dense,
           f"use 0 to model.n_layer - 1 = {m.n_layer - 1}")
  _require(not m.scan_layers or (m.moe_every == 1 and m.moe_first_dense == 0),
           "model.scan_layers", m.scan_layers, "scanned layers are all alike: use "
           "moe_every=1 and moe_first_dense=0 with it, or scan_layers=False")
  _require(m.moe_router in ("softmax", "sigmoid"), "model.moe_router", m.moe_router,
           "use 'softmax' or 'sigmoid'")
  _require(m.moe_capacity_factor >= 0, "model.moe_capacity_factor", m.moe_capacity_factor,
           "use 0 (dropless) or a positive factor (1.25)")
  _require(m.moe_dispatch in ("ragged", "blocks"), "model.moe_dispatch", m.moe_dispatch,
           "use 'ragged' or 'blocks'")
  _require(m.moe_capacity_factor == 0 or m.moe_dispatch == "blocks", "model.moe_dispatch",
           m.moe_dispatch, "a capacity (model.moe_capacity_factor > 0) fills per-expert "
           "blocks: use 'blocks', or moe_capacity_factor=0")
  _require(not m.use_bias, "model.use_bias", m.use_bias,
           "the experts have no biases (as Mixtral, Qwen3-MoE, DeepSeek): use False")


def _validate_train(t) -> None:
  for field in ("batch_size", "grad_accum_steps", "max_steps", "eval_interval", "eval_iters",
                "log_interval", "checkpoint_every", "keep_checkpoints"):
    _require(t[field] > 0, f"train.{field}", t[field], "use a positive number")
  _require(t.log_seconds >= 0, "train.log_seconds", t.log_seconds, "use 0 or more seconds")
  _require(t.learning_rate > 0, "train.learning_rate", t.learning_rate, "use a positive rate")
  _require(0 <= t.min_lr <= t.learning_rate, "train.min_lr", t.min_lr,
           "use a rate in [0, train.learning_rate]")
  _require(t.warmup_steps >= 0, "train.warmup_steps", t.warmup_steps, "use 0 or more")
  # lr_decay_steps = max_steps (followed or set) with a longer warmup: the warmup is cut to the
  # run (optimizer.warmup_steps); one set apart from max_steps must exceed the warmup
  _require(t.lr_decay_steps > t.warmup_steps or t.lr_decay_steps == t.max_steps,
           "train.lr_decay_steps", t.lr_decay_steps,
           f"it must exceed train.warmup_steps={t.warmup_steps} (or equal train.max_steps="
           f"{t.max_steps}, which cuts the warmup to the run)")
  _require(t.lr_decay_steps > 0, "train.lr_decay_steps", t.lr_decay_steps, "use a positive number")
  _require(t.schedule in SCHEDULES, "train.schedule", t.schedule,
           f"use one of {', '.join(map(repr, SCHEDULES))}")
  _require(0 <= t.decay_fraction <= 1, "train.decay_fraction", t.decay_fraction,
           "use a fraction in [0, 1]")
  _require(t.optimizer in OPTIMIZERS, "train.optimizer", t.optimizer,
           f"use one of {', '.join(map(repr, OPTIMIZERS))}")
  _require(0 <= t.momentum < 1, "train.momentum", t.momentum, "use a value in [0, 1)")
  _require(t.muon_ns_steps >= 1, "train.muon_ns_steps", t.muon_ns_steps, "use 1 or more")
  _require(t.muon_consistent_rms >= 0, "train.muon_consistent_rms", t.muon_consistent_rms,
           "use 0 (Jordan's scaling) or a positive RMS (0.2)")
  _require(t.muon_adam_lr_ratio > 0, "train.muon_adam_lr_ratio", t.muon_adam_lr_ratio,
           "use a positive multiple")
  _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "use 0 or more")
  for field in ("embed_lr", "head_lr"):
    _require(t[field] >= 0, f"train.{field}", t[field], "use 0 (the main rate) or a positive rate")
  for field in ("beta1", "beta2"):
    _require(0 <= t[field] < 1, f"train.{field}", t[field], "use a value in [0, 1)")
  _require(t.grad_clip >= 0, "train.grad_clip", t.grad_clip, "use 0 (off) or a positive norm")
  _require(t.sample_tokens >= 0, "train.sample_tokens", t.sample_tokens, "use 0 or more")
  _require(t.nan_policy in ("stop", "skip"), "train.nan_policy", t.nan_policy,
           "use 'stop' or 'skip'")


def is_rl(config) -> bool:
  """An RL config (`llm-jax rl`'s): one that names an rl.task."""
  return bool(config.rl.task)


def run_steps(config) -> int:
  """The steps a run of config takes in all, the step its summary.json reports when finished:
  train.max_steps, after rl.sft_steps supervised steps for an RL config."""
  return config.train.max_steps + (config.rl.sft_steps if is_rl(config) else 0)


def _validate_rl(r, t) -> None:
  _require(t.rl_epochs >= 1, "train.rl_epochs", t.rl_epochs, "use 1 or more updates per batch")
  _require(not r.task or r.task.partition(":")[0] in RL_TASKS or
           r.task.partition(":")[0].endswith(".py"),
           "rl.task", r.task,
           f"use one of {', '.join(map(repr, RL_TASKS))}, or 'path/to/task.py' whose "
           f"get_task(seed) returns a llm_jax.rl.tasks.Task")
  _require(r.group_size >= 2, "rl.group_size", r.group_size,
           "use 2 or more: advantages compare the samples of one prompt, and a group of one has "
           "no signal")
  for field in ("prompts_per_step", "max_new_tokens"):
    _require(r[field] >= 1, f"rl.{field}", r[field], "use a positive number")
  _require(r.sft_steps >= 0, "rl.sft_steps", r.sft_steps, "use 0 (none) or more")
  _require(r.lr_scale > 0, "rl.lr_scale", r.lr_scale, "use a positive multiple (1.0: the same)")
  _require(r.temperature > 0, "rl.temperature", r.temperature, "use a positive temperature")
  _require(r.loss_norm in LOSS_NORMS, "rl.loss_norm", r.loss_norm,
           f"use one of {', '.join(map(repr, LOSS_NORMS))}")
  _require(r.importance in IMPORTANCES, "rl.importance", r.importance,
           f"use one of {', '.join(map(repr, IMPORTANCES))}")
  _require(0 <= r.clip_low < 1, "rl.clip_low", r.clip_low, "use a value in [0, 1)")
  _require(r.clip_high >= 0, "rl.clip_high", r.clip_high, "use 0 or more")
  _require(r.kl_coef >= 0, "rl.kl_coef", r.kl_coef, "use 0 (no KL) or a positive weight")
  _require(r.kl_coef == 0 or t.init_from or r.sft_steps > 0, "rl.kl_coef", r.kl_coef,
           "a KL penalty needs a reference policy, the one RL starts from: set "
           "train.init_from=<run> or rl.sft_steps > 0, or use kl_coef=0")
