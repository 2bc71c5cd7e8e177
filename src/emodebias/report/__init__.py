"""Paper-style tables (`tables`), figures (`plots`) and the Markdown + HTML report (`html`)."""
