"""Image-generation metrics under a stated protocol.

    from latentforge.metrics import evaluate, format_table
    result = evaluate(fake_u8, "fashion-mnist:test", n=10000)   # FID, KID, precision/recall
    print(format_table(result))

features.py       Inception-v3 pool3 features (standard FID weights, verified by SHA-256), fast on CPU
fid.py            Frechet distance (Heusel et al. 2017)
kid.py            kernel inception distance (Binkowski et al. 2018)
prdc.py           precision / recall (Kynkaanniemi et al. 2019), density / coverage (Naeem et al. 2020)
memorization.py   nearest-training-image distances in pixel space, near-copy rate, closest pairs PNG
evaluate.py       the protocol: reference selection, resizing, cached reference features, result dict
classifier.py     class accuracy of conditional samples, judged by a small CNN trained on the real data

Importing this package is cheap: nothing loads the Inception weights until features are needed.
"""

from .classifier import ClassifierError, class_accuracy, get_classifier
from .evaluate import (METRICS, SELECTION_RULE, InTrainingEvaluator, cache_root, evaluate, evaluate_sets,
                       format_table, match_images, reference_features, select_indices)
from .features import (FEATURE_FILE, FEATURE_PACKAGE, FEATURE_SHA256, PREPROCESSING, FeatureModelError,
                       InceptionFeatures, load_shipped_model, locate_weights, preprocess, protocol)
from .fid import feature_statistics, fid_from_features, frechet_distance
from .kid import kid, mmd2_unbiased, polynomial_kernel
from .memorization import MemorizationReport, memorization, nearest_neighbours, save_closest_pairs_png
from .prdc import knn_radii, prdc, precision_recall

__all__ = [
    "evaluate", "evaluate_sets", "InTrainingEvaluator", "format_table", "reference_features", "match_images",
    "select_indices", "cache_root", "METRICS", "SELECTION_RULE",
    "InceptionFeatures", "protocol", "preprocess", "load_shipped_model", "locate_weights", "FeatureModelError",
    "FEATURE_FILE", "FEATURE_PACKAGE", "FEATURE_SHA256", "PREPROCESSING",
    "frechet_distance", "feature_statistics", "fid_from_features",
    "kid", "mmd2_unbiased", "polynomial_kernel",
    "prdc", "precision_recall", "knn_radii",
    "memorization", "MemorizationReport", "nearest_neighbours", "save_closest_pairs_png",
    "get_classifier", "class_accuracy", "ClassifierError",
]
