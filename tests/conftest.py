from hypothesis import settings

# The default keeps the suite fast; `pytest --hypothesis-profile=thorough` digs deeper.
settings.register_profile("ntkcheck", max_examples=40, deadline=None)
settings.register_profile("thorough", max_examples=1000, deadline=None)
settings.load_profile("ntkcheck")
