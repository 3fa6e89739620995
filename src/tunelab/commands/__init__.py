"""What the CLI commands do beyond parsing flags: data inspect/convert, rewards, eval, export."""
