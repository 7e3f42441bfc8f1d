/* Reductions and the squeeze-excitation pieces, natively (their Python bindings are listed in
   REDUCE_METHODS, which kernels.c puts in the module's method table). */
#ifndef GRAPHOPT_REDUCE_H
#define GRAPHOPT_REDUCE_H

#define REDUCE_METHODS

#endif
