/* moekit: the public C API (umbrella header). See docs/engine.md. */
#ifndef MOE_MOE_H
#define MOE_MOE_H

#include "moe/dtype.h"
#include "moe/gguf.h"
#include "moe/init.h"
#include "moe/model.h"
#include "moe/sample.h"
#include "moe/status.h"
#include "moe/tok.h"

#endif
