"""The operator's side: the admin API on its own listener, the tokens that
open it, the `chatbox-admin` command, and the Moderator they all act through."""
