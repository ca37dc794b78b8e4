"""From a CT series to a SeriesResult: reading (:mod:`.io`), lungs (:mod:`.lung`),
pre-processing (:mod:`.preprocess`), the network (:mod:`.network`), its weights folder
(:mod:`.weights`), localisation (:mod:`.localise`) and the predictor of the 2D multi-scale CAM model
(:mod:`.multiscale_cam`).

:mod:`.kinds` is the seam: the interface every predictor implements and the registry of model
kinds that the weights' metadata names. The node loads predictors only through it.
"""
