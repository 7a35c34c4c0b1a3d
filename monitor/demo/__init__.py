"""``sentinel demo``: a scripted run of the daemon on embedded defaults, with benign traffic and attacks."""
