"""What attention buys: the bigram (the next character from the current one alone) against GPTs
of 1, 2 and 4 layers, on the same batches and the same number of steps.

The bigram is a single 76 x 76 table and learns best with a high learning rate and no weight
decay (as configs/bigram_char.py); the GPTs keep the baby GPT's settings.
"""


def get_experiment():
  return {
      "base": "../ablation_base.py",
      "points": [
          {"model.name": "bigram", "train.learning_rate": 1e-1, "train.min_lr": 1e-2,
           "train.weight_decay": 0.0},
          {"model.n_layer": 1},
          {"model.n_layer": 2},
          {"model.n_layer": 4},
      ],
      "seeds": [0, 1, 2],
  }
