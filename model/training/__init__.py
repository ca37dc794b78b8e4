"""Training and evaluation of the model: data layouts and the slice cache (:mod:`.datasets`), the
loss (:mod:`.loss`), training (:mod:`.train`), metrics (:mod:`.metrics`) and evaluation
(:mod:`.evaluate`). Inference is model.inference's; nothing there imports this package.
"""
