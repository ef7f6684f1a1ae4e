"""All ssprl_d2 config keys, added to a Detectron2 config by :func:`add_ssprl_config`.

Enumerated keys take one of the tuples of :mod:`.choices` (named in their comments). Keys that
were renamed raise a ``KeyError`` naming the new key when a config still sets them.
"""
from detectron2.config import CfgNode as CN
from detectron2.projects.deeplab import add_deeplab_config

# Old key -> (new key, note), raised by yacs when a config file or override sets the old key.
RENAMED_KEYS = {
    "INPUT.SSPRL.PIXEL_MEAN": ("MODEL.PIXEL_MEAN", "pre-training now normalises with "
                               "Detectron2's MODEL.PIXEL_MEAN / PIXEL_STD (RGB, 0-255 scale)"),
    "INPUT.SSPRL.PIXEL_STD": ("MODEL.PIXEL_STD", "see MODEL.PIXEL_MEAN"),
    "DATASETS.SSPRL.LABEL_SUBSET": ("DATASETS.CLASSIFICATION.LABEL_SUBSET",
                                    "label subsets belong to the classification jobs"),
    "DATASETS.SSPRL.LABEL_SUBSET_FRACTION": ("DATASETS.CLASSIFICATION.LABEL_SUBSET_FRACTION",
                                             "label subsets belong to the classification jobs"),
    "DATASETS.SSPRL.LABEL_SUBSET_SEED": ("DATASETS.CLASSIFICATION.LABEL_SUBSET_SEED",
                                         "label subsets belong to the classification jobs"),
}


def add_ssprl_config(cfg: CN) -> CN:
    """Add every ssprl_d2 key (pre-training, classification, solver, data, segmentation) to
    ``cfg`` in place.

    Returns:
        the same ``cfg``, for chaining.
    """
    _add_pretrain_model_config(cfg)
    _add_pretrain_input_config(cfg)
    _add_solver_config(cfg)
    _add_classification_config(cfg)
    _add_data_config(cfg)
    _add_knn_config(cfg)
    _add_input_trust_config(cfg)
    _add_segmentation_config(cfg)
    for old, (new, note) in RENAMED_KEYS.items():
        cfg.register_renamed_key(old, new, message=note)
    return cfg


def _add_pretrain_model_config(cfg: CN) -> None:
    _C = cfg
    _C.MODEL.SSPRL = CN()
    # Hidden width of every projection head (Linear-BN-ReLU-Linear); 0 = a single Linear layer.
    _C.MODEL.SSPRL.HEAD_HIDDEN_DIM = 2048
    # Output width D of every projection head (the embedding that is L2-normalised).
    _C.MODEL.SSPRL.HEAD_OUT_DIM = 128
    # Number of prototypes K_s, one entry per scale (scale 0 first); length = 1 + len(GRIDS).
    _C.MODEL.SSPRL.NUM_PROTOTYPES = [300, 150, 150]
    # One prototype set shared by all scales (Table-4 ablation); needs equal K_s for all scales.
    _C.MODEL.SSPRL.SHARED_PROTOTYPES = False
    # Softmax temperature tau of the prototype predictions (Eq. 1) and cross-scale predictions.
    _C.MODEL.SSPRL.TEMPERATURE = 0.1
    # Sinkhorn-Knopp entropic regularisation epsilon.
    _C.MODEL.SSPRL.SINKHORN_EPSILON = 0.05
    # Sinkhorn-Knopp iterations.
    _C.MODEL.SSPRL.SINKHORN_ITERS = 3
    # Scale-0 crops whose codes are computed and predicted from all other crops (SwAV).
    _C.MODEL.SSPRL.ASSIGN_CROPS = [0, 1]
    # alpha_s of L_pyr, one per scale (scale 0 first).
    _C.MODEL.SSPRL.ALPHA = [1.0, 0.25, 0.25]
    # beta_s of L_cross, one per pyramid scale s >= 1.
    _C.MODEL.SSPRL.BETA = [0.25, 0.25]
    # lambda, the weight of L_cross in the total loss (Eq. 4).
    _C.MODEL.SSPRL.CROSS_WEIGHT = 1.0
    # Input of the cross-scale learners, one of choices.CROSS_INPUTS: "scores" (mean raw scores,
    # L2-normalised, the authors' release) or "probs" (mean softmax, Eq. 3 as printed). Default
    # "scores": with "probs" the cross-scale terms stayed at ln K on the demo (their logits are
    # capped at |mean| / tau).
    _C.MODEL.SSPRL.CROSS_INPUT = "scores"
    # L2-normalise the "probs" input of the cross-scale learners (the "scores" input always is).
    # The learners are cosine classifiers (unit rows): an unnormalised mean of softmax vectors
    # has norm ~0.1-0.5, which caps their logits far below 1 / TEMPERATURE.
    _C.MODEL.SSPRL.CROSS_NORMALIZE_INPUT = False
    # Train the swapped-prediction terms of scales s >= 1 (False = the "L_cross only" ablation).
    _C.MODEL.SSPRL.USE_PYRAMID_LOSS = True
    # Train the cross-scale terms (False = the "L_pyr only" ablation).
    _C.MODEL.SSPRL.USE_CROSS_LOSS = True
    # Prototypes and cross-scale learners get no update for this many iterations.
    _C.MODEL.SSPRL.FREEZE_PROTOTYPES_ITERS = 648
    # Backbone feature that is globally pooled into the heads.
    _C.MODEL.SSPRL.IN_FEATURE = "res5"
    # Backbone passes, one of choices.GROUP_CROPS: "resolution" (all crops of
    # one size together) or "none" (one pass per crop group, for debugging).
    _C.MODEL.SSPRL.GROUP_CROPS = "resolution"
    # Stop with an error naming the term when a loss is NaN/inf.
    _C.MODEL.SSPRL.CHECK_FINITE_LOSS = True
    # Run the backbone in channels-last memory format (faster convolutions on recent GPUs).
    _C.MODEL.SSPRL.CHANNELS_LAST = False
    # torch.compile the backbone (nn.Module.compile: checkpoint keys unchanged; one graph per crop
    # resolution, compiled during the first iteration) with this backend ("inductor" fuses the
    # BN/ReLU memory passes on GPUs; "eager"/"aot_eager" for debugging).
    _C.MODEL.SSPRL.COMPILE = False
    _C.MODEL.SSPRL.COMPILE_BACKEND = "inductor"

    _C.MODEL.SSPRL.QUEUE = CN()
    # Global queue length per scale (scale 0 first); 0 disables the queue of that scale. Rounded
    # down to a multiple of the number of entries pushed per step (logged at start-up).
    _C.MODEL.SSPRL.QUEUE.LENGTHS = [0, 0, 0]
    # Iteration at which the queues start filling; they are used once full.
    _C.MODEL.SSPRL.QUEUE.START_ITER = 0
    # If >= 0, overrides START_ITER with this epoch converted through the dataset size.
    _C.MODEL.SSPRL.QUEUE.START_EPOCH = -1.0


def _add_pretrain_input_config(cfg: CN) -> None:
    _C = cfg
    _C.INPUT.SSPRL = CN()
    # Scale-0 multi-crop: output size of each crop group (e.g. 2 x 224 + 6 x 96).
    _C.INPUT.SSPRL.CROP_SIZES = [224, 96]
    # Scale-0 multi-crop: number of crops in each group.
    _C.INPUT.SSPRL.NUM_CROPS = [2, 6]
    # Scale-0 multi-crop: RandomResizedCrop minimum area fraction per group.
    _C.INPUT.SSPRL.MIN_SCALES = [0.14, 0.05]
    # Scale-0 multi-crop: RandomResizedCrop maximum area fraction per group.
    _C.INPUT.SSPRL.MAX_SCALES = [1.0, 0.14]
    # Pyramid scales s >= 1: grid size g_s (M_s = g_s * g_s patches). [] = global-only baseline.
    _C.INPUT.SSPRL.GRIDS = [2, 3]
    # Pyramid scales: side of the resized crop that is cut into the grid (divisible by its grid;
    # the release's 383 px scale 2 uses 127-px cells, i.e. 381 = 3 x 127).
    _C.INPUT.SSPRL.PYRAMID_RESIZE = [314, 381]
    # Pyramid scales: RandomResizedCrop area range [min, max] of the resized crop, per scale.
    _C.INPUT.SSPRL.PYRAMID_SCALES = [[0.6, 1.0], [0.6, 1.0]]
    # Pyramid scales: side of the random crop taken inside each grid cell.
    _C.INPUT.SSPRL.PATCH_SIZES = [112, 96]
    # Both pyramid views of a scale come from one resized crop (release) or from two.
    _C.INPUT.SSPRL.SHARED_PYRAMID_CROP = True
    # Shuffle the patch order (identically in both views), as the release does.
    _C.INPUT.SSPRL.SHUFFLE_PATCHES = True
    # RandomResizedCrop aspect-ratio range.
    _C.INPUT.SSPRL.RATIO = [3.0 / 4.0, 4.0 / 3.0]
    # Horizontal flip probability (per crop / patch).
    _C.INPUT.SSPRL.FLIP_PROB = 0.5
    # Colour jitter strength s: brightness/contrast/saturation 0.8 s, hue 0.2 s.
    _C.INPUT.SSPRL.COLOR_JITTER = [0.8, 0.8, 0.8, 0.2]
    # Probability of applying colour jitter.
    _C.INPUT.SSPRL.COLOR_JITTER_PROB = 0.8
    # Probability of random grayscale.
    _C.INPUT.SSPRL.GRAYSCALE_PROB = 0.2
    # Probability of Gaussian blur.
    _C.INPUT.SSPRL.BLUR_PROB = 0.5
    # Gaussian blur sigma range.
    _C.INPUT.SSPRL.BLUR_SIGMA = [0.1, 2.0]
    # Where photometric augmentation runs, one of choices.PHOTOMETRIC_ON: "loader" (CPU workers)
    # or "model" (batched on the training device, parameters still drawn per crop by the loader).
    _C.INPUT.SSPRL.PHOTOMETRIC_ON = "model"
    # Loader-side photometric kernel (PHOTOMETRIC_ON loader), one of choices.LOADER_KERNELS:
    # "numba" (one compiled pass per crop, ~7x cheaper on the CPU) or "torch" (the batched torch
    # ops that the model uses on the device).
    _C.INPUT.SSPRL.LOADER_KERNEL = "numba"
    # Resampling of crops, one of choices.RESAMPLE_MODES: "interpolate" (antialiased bilinear per
    # crop) or "roi_align" (all crops of one size in one batched op).
    _C.INPUT.SSPRL.RESAMPLE = "interpolate"
    # Seed of the per-sample augmentation streams (-1 = from SEED / time). Fixed seeds make a
    # resumed run see exactly the same crops as an uninterrupted one.
    _C.INPUT.SSPRL.SEED = -1


def _add_solver_config(cfg: CN) -> None:
    _C = cfg
    # Optimizer, one of choices.OPTIMIZERS: "SGD" (Detectron2's) or "LARS" (SGD momentum wrapped
    # with the LARC trust rule).
    _C.SOLVER.OPTIMIZER = "SGD"
    _C.SOLVER.LARS = CN()
    # LARC trust coefficient.
    _C.SOLVER.LARS.TRUST_COEFFICIENT = 0.001
    # Clip the adaptive lr at the global lr (LARC "clip" mode); the release uses False.
    _C.SOLVER.LARS.CLIP = False
    # Exclude BatchNorm and bias parameters from adaptation and weight decay.
    _C.SOLVER.LARS.EXCLUDE_BN_BIAS = False
    _C.SOLVER.LARS.EPS = 1e-8
    # If > 0, BASE_LR and BASE_LR_END are for this total batch size and are scaled linearly to
    # SOLVER.IMS_PER_BATCH.
    _C.SOLVER.REFERENCE_BATCH_SIZE = 0
    # If > 0, MAX_ITER (and STEPS, CHECKPOINT_PERIOD when 0) come from epochs over the train set.
    _C.SOLVER.EPOCHS = 0.0
    # Mixed precision dtype when SOLVER.AMP.ENABLED, one of choices.AMP_PRECISIONS: "float16"
    # (with loss scaling) or "bfloat16".
    _C.SOLVER.AMP.PRECISION = "float16"


def _add_classification_config(cfg: CN) -> None:
    _C = cfg
    _C.MODEL.CLASSIFIER = CN()
    # Number of labels of the multi-label head.
    _C.MODEL.CLASSIFIER.NUM_CLASSES = 80
    # One of choices.CLASSIFIER_MODES: "linear" (frozen backbone, BN in eval mode) or "finetune"
    # (whole network trained).
    _C.MODEL.CLASSIFIER.MODE = "linear"
    # Backbone feature that is globally pooled.
    _C.MODEL.CLASSIFIER.IN_FEATURE = "res5"
    # Target value that means "ignore" (VOC difficult).
    _C.MODEL.CLASSIFIER.IGNORE_VALUE = -1
    # lr multiplier of the backbone in finetune mode (head uses BASE_LR).
    _C.MODEL.CLASSIFIER.BACKBONE_LR_FACTOR = 0.01

    _C.MODEL.CLASSIFIER.FAST_LINEAR = CN()
    # Linear evaluation on cached frozen features (ssprl_d2.engine.fast_linear) instead of the
    # Trainer; MODE must be "linear".
    _C.MODEL.CLASSIFIER.FAST_LINEAR.ENABLED = False
    # Feature passes over the train set with the train transform (random crop + flip); 0 = one
    # pass with the test transform (resize + center crop).
    _C.MODEL.CLASSIFIER.FAST_LINEAR.TRAIN_AUG_PASSES = 0
    # Also save the extracted features under OUTPUT_DIR and reuse them when they match.
    _C.MODEL.CLASSIFIER.FAST_LINEAR.CACHE_TO_DISK = False
    # Images per batch of the feature-extraction pass (per process).
    _C.MODEL.CLASSIFIER.FAST_LINEAR.EXTRACT_BATCH_SIZE = 64

    _C.INPUT.CLASSIFICATION = CN()
    # Train transform: RandomResizedCrop output size (px), then horizontal flip.
    _C.INPUT.CLASSIFICATION.TRAIN_CROP_SIZE = 224
    # Train transform: RandomResizedCrop range of the crop area fraction.
    _C.INPUT.CLASSIFICATION.TRAIN_CROP_SCALE = (0.08, 1.0)
    # Train transform: RandomResizedCrop range of the crop aspect ratio (w / h).
    _C.INPUT.CLASSIFICATION.TRAIN_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
    # Train transform: probability of a horizontal flip.
    _C.INPUT.CLASSIFICATION.TRAIN_FLIP_PROB = 0.5
    # Test transform: the shorter side is resized to this (px) ...
    _C.INPUT.CLASSIFICATION.TEST_RESIZE = 256
    # ... then the center crop of this size (px) is taken.
    _C.INPUT.CLASSIFICATION.TEST_CROP_SIZE = 224
    # Images per inference batch over all processes (classification test loader).
    _C.TEST.IMS_PER_BATCH = 1


def _add_data_config(cfg: CN) -> None:
    _C = cfg
    _C.DATASETS.SSPRL = CN()
    # Image folders registered on the fly as label-free pre-training sets: list of
    # [name, folder] pairs, e.g. [["imagenet_train_folder", "/data/imagenet/train"]].
    _C.DATASETS.SSPRL.IMAGE_FOLDERS = []
    # COCO jsons registered on the fly: list of [name, json, image_root] triples.
    _C.DATASETS.SSPRL.COCO_JSONS = []

    # Labelled subsets of the classification jobs (semi-supervised fine-tuning).
    _C.DATASETS.CLASSIFICATION = CN()
    # File with the image ids of a labelled subset; "" = all images.
    _C.DATASETS.CLASSIFICATION.LABEL_SUBSET = ""
    # If LABEL_SUBSET does not exist: draw this fraction of the training image ids (sorted ids,
    # numpy RandomState(LABEL_SUBSET_SEED), without replacement) and write it; 0 = must exist.
    _C.DATASETS.CLASSIFICATION.LABEL_SUBSET_FRACTION = 0.0
    # Seed of the label-subset draw.
    _C.DATASETS.CLASSIFICATION.LABEL_SUBSET_SEED = 0


def _add_knn_config(cfg: CN) -> None:
    _C = cfg
    # kNN multi-label monitor of pre-training (ssprl_d2.engine.hooks.KNNMonitor). Images go
    # through the classification test transform (INPUT.CLASSIFICATION.TEST_RESIZE / CROP_SIZE).
    _C.TEST.KNN = CN()
    # Labelled dataset whose pooled backbone features are the memory bank; "" = monitor off.
    _C.TEST.KNN.TRAIN_DATASET = ""
    # Labelled datasets that query the memory bank (one mAP each), e.g. ("ssprl_demo_val",).
    _C.TEST.KNN.TEST_DATASETS = ()
    # Evaluate after every PERIOD iterations and after the last one; 0 = after the last one only.
    _C.TEST.KNN.PERIOD = 1000
    # Number of nearest neighbours (cosine similarity) that vote.
    _C.TEST.KNN.K = 20
    # Temperature T of the vote weights exp(cosine / T).
    _C.TEST.KNN.TEMPERATURE = 0.07
    # At most this many images per dataset (a fixed subset, RandomState(0)); 0 = all.
    _C.TEST.KNN.MAX_IMAGES = 5000
    # Images per feature-extraction batch, per process.
    _C.TEST.KNN.BATCH_SIZE = 64
    # Keep the decoded, transformed uint8 images in memory after the first evaluation (about
    # 3 x TEST_CROP_SIZE^2 bytes per image, split over the processes).
    _C.TEST.KNN.CACHE_IMAGES = True


def _add_input_trust_config(cfg: CN) -> None:
    _C = cfg
    # Load MODEL.WEIGHTS / resumed checkpoints with plain pickle (can run code from the file);
    # False = tensors, numpy arrays, containers and the project's own checkpoint types only.
    _C.MODEL.WEIGHTS_TRUST_PICKLE = False
    # Instance mask format of detection training: "auto" (bitmask if any training annotation is
    # RLE, else polygon; logged at start-up), "polygon" or "bitmask" (choices.MASK_FORMATS).
    _C.INPUT.MASK_FORMAT = "auto"


def _add_segmentation_config(cfg: CN) -> None:
    _C = cfg
    # Detectron2's DeepLab keys, used by the FCN transfer: MODEL.RESNETS.RES4_DILATION /
    # RES5_MULTI_GRID / STEM_TYPE, INPUT.CROP.SINGLE_CATEGORY_MAX_AREA (mmseg's cat_max_ratio),
    # SOLVER.POLY_LR_POWER / POLY_LR_CONSTANT_ENDING (LR_SCHEDULER_NAME "WarmupPolyLR").
    add_deeplab_config(_C)
    _C.MODEL.DILATED_RESNET = CN()
    # mmseg's contract_dilation: the first block of a dilated stage uses half the dilation.
    _C.MODEL.DILATED_RESNET.CONTRACT_DILATION = True

    _C.MODEL.FCN = CN()
    # Decode head: number of 3x3 conv-norm-ReLU (width MODEL.SEM_SEG_HEAD.CONVS_DIM).
    _C.MODEL.FCN.NUM_CONVS = 2
    # Decode head: concatenate the input back and fuse it with one more 3x3 conv.
    _C.MODEL.FCN.CONCAT_INPUT = True
    # Dropout before the 1x1 classifiers (both heads).
    _C.MODEL.FCN.DROPOUT = 0.1
    # Backbone feature of the auxiliary FCN head; "" = no auxiliary head.
    _C.MODEL.FCN.AUX_IN_FEATURE = "res4"
    # Auxiliary head: number of 3x3 conv-norm-ReLU.
    _C.MODEL.FCN.AUX_NUM_CONVS = 1
    # Auxiliary head: conv width.
    _C.MODEL.FCN.AUX_CONVS_DIM = 256
    # Weight of the auxiliary cross-entropy (training only).
    _C.MODEL.FCN.AUX_LOSS_WEIGHT = 0.4
    # align_corners of every bilinear resize of logits (mmseg Cityscapes 769 configs: True).
    _C.MODEL.FCN.ALIGN_CORNERS = False
    # Average the cross-entropy over labelled pixels only (False: over all pixels, mmseg < 0.23).
    _C.MODEL.FCN.AVG_NON_IGNORE = False

    _C.INPUT.SEG = CN()
    # Train resize target (long side, short side), kept aspect ratio, times a random ratio.
    _C.INPUT.SEG.TRAIN_SCALE = [2048, 512]
    # Range [min, max] of that random ratio (uniform).
    _C.INPUT.SEG.RATIO_RANGE = [0.5, 2.0]
    # mmseg's PhotoMetricDistortion (brightness, contrast, saturation, hue) on training images.
    _C.INPUT.SEG.PHOTOMETRIC = True
    # Pad training crops to INPUT.CROP.SIZE (image with the mean colour, label with the ignore
    # value), so every batch has the crop size.
    _C.INPUT.SEG.PAD_TO_CROP = True

    _C.TEST.SEM_SEG = CN()
    # Inference of SlidingWindowSemanticSegmentor, one of choices.SEM_SEG_TEST_MODES: "whole" (the
    # resized image) or "slide".
    _C.TEST.SEM_SEG.MODE = "whole"
    # Sliding-window size (h, w).
    _C.TEST.SEM_SEG.CROP_SIZE = [769, 769]
    # Sliding-window step (h, w).
    _C.TEST.SEM_SEG.STRIDE = [513, 513]
