"""Settings of the package: edit the constants here, or override one per run with
`--set NAME=VALUE` (or the named flags) on either script. Each script resolves them
into a config that it saves in its run folder, so a run never depends on this file again.

Lengths are in Angstrom, energies in eV.
"""
from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent

# --- paths -------------------------------------------------------------------------
DATA_ROOT = str(_PACKAGE_DIR / "data")  # the parsed structure cache is written here once
OUTPUT_DIR = str(_PACKAGE_DIR / "runs")  # every run writes one timestamped folder here

# --- dataset -----------------------------------------------------------------------
DATASET = "qm9"  # "qm9": 130,831 molecules (qm9pack); "coremof": CoRE MOF 2019-ASR crystals (core-mof), periodic;
# any other value is the path of a structure file that ase.io.read reads (structure_file.py)
TARGET = "homo"  # the property labelled: "homo" (eV) for qm9; a 2019-ASR.csv column for coremof (coremof.py
# lists them: LCD, PLD, LFPD, cm3_g, ASA_m2_cm3, ASA_m2_g, AV_VF, AV_cm3_g, ...); for a file, the atoms.info key
# (or calculator result, such as energy) holding the label: structures without it are unlabelled
TARGET_UNIT = "unknown"  # a structure file's label unit, written into the latents and plots (built-ins set their own)
ASE_FORMAT = None  # a structure file's ASE format ("extxyz", "db", "cif", ...); None: ASE guesses from name and content

# --- structures --------------------------------------------------------------------
ATOM_TYPES = None  # elements the encoder embeds; None: every element of the dataset; any other one is an input error
MAX_STRUCTURE_ATOMS = 1000  # larger structures are left out (3.8% of CoRE MOF cells, none of QM9); see README
MAX_STRUCTURES = None  # None uses every structure; an int takes a seeded subset, for quick runs
TRAIN_VAL_TEST_SPLIT = (0.8, 0.1, 0.1)  # fractions of all structures, seeded, saved with the latents
SEED = 0  # fixes the split, the subset, the initialisation and the batch order of the encoder

# --- encoder (E(3)-equivariant point convolution) ---------------------------------
ENC_HIDDEN_IRREPS = "16x0e + 16x1o"  # node features between layers; the lmax of the edge harmonics follows it
ENC_NUM_LAYERS = 3  # interaction layers: the receptive field is about this many times the cutoff
CUTOFF = 5.0  # radius graph cutoff (Angstrom); QM9 molecules span up to ~10 Angstrom
NUM_RADIAL_BASIS = 8  # Bessel functions that encode an edge length
RADIAL_HIDDEN_DIM = 64  # width of the MLP that turns the radial basis into tensor-product weights
LATENT_DIM = 128  # size of the molecule latent used for selection and the property head

# --- self-supervised decoder and its targets --------------------------------------
DEC_HIDDEN_DIM = 256  # width of the invariant MLP from latent to descriptors
# Loss weight of each structure-descriptor group; delete a key to drop that group.
DESCRIPTOR_WEIGHTS = {"atom_counts": 1.0, "distance_hist": 1.0, "pair_hist": 1.0}
DIST_HIST_RANGE = (0.5, 6.0)  # first and last centre of the all-pairs distance histogram
DIST_HIST_BINS = 48  # Gaussian-smeared bins of that histogram (width = bin spacing)
PAIR_HIST_RANGE = (0.8, 3.2)  # element-pair histogram range: bonds and 1-3 neighbours
PAIR_HIST_BINS = 24  # bins per element pair (0.1 Angstrom spacing tells bond orders apart)
HIST_ELEMENTS = ("H", "C", "N", "O", "F")  # elements the pair and angle histograms resolve; the dataset's other
# elements share one class "other" (all of CoRE MOF's 77 elements would make 3,003 pair histograms)
# "angle_hist" in DESCRIPTOR_WEIGHTS adds bond-angle histograms per element triplet (H-C-H, C-C-O, ...)
BOND_TOLERANCE = 1.15  # a bond: closer than this times the two covalent radii; QM9's distances have a gap here
ANGLE_HIST_RANGE = (50.0, 180.0)  # degrees: three-membered rings (about 60) to linear triple bonds
ANGLE_HIST_BINS = 27  # bins per element triplet (5 degree spacing)
DENOISE_WEIGHT = 0.0  # loss weight of coordinate denoising: predict each atom's position noise; 0 turns it off
DENOISE_SIGMA = 0.04  # Angstrom: standard deviation of the Gaussian noise added to every coordinate
LATENT_READOUT = "all"  # "all": invariants of every layer (scalars, vector norms); "last": the last layer's scalars
LATENT_POOLING = "auto"  # per-atom readout -> latent: "sum", "mean", "moments" (mean, std, max); "auto": sum for
# molecules, mean for periodic crystals (a supercell then keeps its latent); intensive properties may want another
MASK_WEIGHT = 0.0  # loss weight of masked atoms: predict the element of masked atoms from their environment; 0: off
MASK_FRACTION = 0.15  # fraction of atoms masked, drawn anew every epoch from (SEED, epoch), when MASK_WEIGHT > 0
ATOM_TARGET_WEIGHT = 0.0  # loss weight of per-atom targets: each atom predicts its own local descriptor; 0: off
ATOM_DESCRIPTOR = "acsf"  # per-atom target (dscribe): "acsf" or "soap"; acsf won a measurement (docs/model.md)
ATOM_DESCRIPTOR_CUTOFF = 5.0  # Angstrom: radius of the local environment the per-atom descriptor sees
SOAP_N_MAX = 4  # radial basis functions of SOAP: its width grows with n_max (n_max + 1) / 2
SOAP_L_MAX = 3  # largest angular degree of SOAP: its width grows with l_max + 1
TEACHER_WEIGHT = 0.0  # loss weight of a frozen teacher: each atom predicts the teacher's standardized invariant
# node features (the PRETRAINED_READOUT readout, cached under DATA_ROOT); a distilled student; 0: off
TEACHER = "sevennet-0"  # the teacher, a pretrained model: "sevennet-0", "sevennet-l3i5" (sevenn) or "chgnet"

# --- encoder training --------------------------------------------------------------
ENC_LR = 1e-3  # Adam learning rate
ENC_BATCH_SIZE = 64  # molecules per optimizer step in all; under torchrun each process takes its share
ENC_EPOCHS = 100  # passes over the training structures; --resume may extend it
ENC_LR_FACTOR = 0.5  # the learning rate is multiplied by this when validation loss plateaus
ENC_LR_PATIENCE = 5  # epochs without validation improvement before that happens
ENC_COMPILE = False  # torch.compile each interaction layer: faster steps after a minute or so of compiling
EVAL_BATCH_SIZE = 256  # molecules per no-grad batch (validation, latents, descriptors); a GPU wants thousands
BATCH_MAX_ATOMS = 8192  # atoms per batch at most, training or not: a batch ends early rather than pass it (never
# on QM9, 29 atoms at most); one structure larger than this is a batch of its own
DIST_TIMEOUT_S = 600  # under torchrun: seconds a process waits for the others before the run fails

# --- property head (ResidualMLP on latents) ---------------------------------------
MLP_HIDDEN_DIM = 256  # width of the residual blocks
MLP_LAYERS = 3  # residual blocks between in_proj and out_proj
MLP_LR = 1e-3  # Adam learning rate
MLP_EPOCHS = 200  # upper bound on a head's epochs; its tuning (HEAD_TUNING) usually ends sooner
MLP_BATCH_SIZE = 64  # labelled molecules per step (a budget below this is one full batch)
MLP_PATIENCE = 20  # epochs without improvement of the tuning MAE (held-out folds or validation) before a stop
MLP_VAL_SIZE = 2000  # seeded subset of the validation split: val_mae, and tuning under HEAD_TUNING="validation"

# --- label selection experiment ----------------------------------------------------
SAMPLING_NS = [10, 20, 50, 100, 200, 500, 1000]  # label budgets N, each a fresh head
SAMPLING_SEEDS = list(range(20))  # one seed fixes every selection's random choices and the head init; 20 and 10
# seeds (below) resolve the 20-50 meV gains of the SevenNet-0 grid after Holm's adjustment (docs/experiment.md)
MLP_SEED_COUNT = 10  # MLP heads fit only the first this many SAMPLING_SEEDS (KRR heads every one): an MLP head
# costs about 30 KRR heads, so the cheap head gets more seeds for the same time
SAMPLING_STRATEGIES = ["random", "kcenter", "kmeans", "typiclust", "herding"]  # selection.py has each one
KCENTER_STANDARDIZE = True  # every strategy measures distances on per-dimension standardized latents
KMEANS_ITERATIONS = 20  # Lloyd rounds at most (kmeans, typiclust); fewer when no molecule changes cluster
TYPICLUST_K = 20  # neighbours of TypiClust's typicality (Hacohen et al. 2022), fewer in small clusters
TYPICLUST_MIN_CLUSTER_SIZE = 5  # TypiClust skips clusters of this many molecules or fewer: outlier groups
HYBRID_SWITCH = 100  # hybrid: TypiClust up to this many labels, k-center after; on the SevenNet-0 QM9 grid
# (results/qm9_sevennet0) TypiClust's MLP gain over random ends between N = 100 and N = 200
HERDING_WIDTH = 1.0  # herding's Gaussian kernel width, in median pairwise latent distances
HERDING_SAMPLE = 10_000  # pool molecules whose kernel mean estimates the pool density for herding
GP_WIDTH = 1.0  # gp_variance's Gaussian kernel width, in median pairwise latent distances of the pool
GP_NOISE = 1e-2  # gp_variance's observation noise variance, relative to the prior variance 1 (a KRR ridge)
GP_SCORE = "integrated"  # gp_variance and adaptive pick by the posterior variance a pick removes from the pool
# (summed on 1,000 rows: uncertain, typical rows; best on validation, docs/results.md), or "variance": a row's own
ADAPTIVE_ROUNDS = [10, 10, 30, 50, 100, 300, 500]  # adaptive's labelling rounds; cumulative sums hold every N
SELECTION_DIM = None  # int: select on this many leading principal components of the (standardized) latents,
# many times faster on wide latents (docs/performance.md measures the cost in picks and MAE); None: all columns

# --- heads of the experiment -------------------------------------------------------
HEAD = ["mlp", "krr"]  # mlp: the ResidualMLP above; krr: kernel ridge regression; a name or a list
KRR_WIDTHS = [0.25, 0.5, 1.0, 2.0]  # Gaussian kernel widths tried, in median pairwise distances of the labels' latents
KRR_RIDGES = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]  # ridge penalties tried; the pair with the lowest tuning error is kept
HEAD_TUNING = "labels"  # "labels": each head tunes on its N labels alone (MLP epochs by k-fold CV, KRR by
# leave-one-out), as a user with N labels must; "validation": early stopping and the KRR grid on MLP_VAL_SIZE
# labelled validation structures, more labels than the budget (kept to compare)
HEAD_CV_FOLDS = 5  # folds of the MLP's epoch-count cross-validation under HEAD_TUNING="labels"; every N needs as many

# --- pretrained-potential latents (export_pretrained_latents.py) --------------------
PRETRAINED_MODEL = "sevennet-0"  # "sevennet-0", "sevennet-l3i5" (sevenn) or "chgnet" (chgnet), frozen
PRETRAINED_READOUT = "all"  # "all": invariant node features after every block, concatenated; "last": the last block
PRETRAINED_MIRROR_AVERAGE = False  # True: average each structure's embedding with its mirror image's (SevenNet has
# no parity, so a mirror image moves its embedding by ~0.4% of its scale); exact E(3) invariance at twice the cost
PRETRAINED_BATCH_SIZE = 4  # molecules per pass: a CPU is fastest when a batch stays in its cache; a GPU wants ~1000
PRETRAINED_CHUNK_SIZE = 1024  # structures per file written while exporting, the unit a worker takes; --resume keeps finished ones
PRETRAINED_WORKERS = None  # processes of one thread that embed chunks; None: one per CPU core, measured fastest
