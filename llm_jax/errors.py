"""The one exception for user mistakes: the command line prints its message on one line and exits 2."""


class UserError(Exception):
  """Bad input from the user (config, files, flags). The message names the field or file and the fix."""
