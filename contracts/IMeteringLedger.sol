// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/**
 * @title IMeteringLedger
 * @notice The types, events and custom errors of the MeteringLedger: what an institution, an analyst or a
 * wallet needs to read the ledger's history and understand its refusals without its implementation.
 * @dev Every error carries the values that explain it; every event is named in the past tense.
 */
interface IMeteringLedger {
    /*//////////////////////////////////////////////////////////////
                                 TYPES
    //////////////////////////////////////////////////////////////*/

    /// @notice Lifecycle of an institution. `None` means never registered.
    enum InstitutionStatus {
        None,
        Active,
        Suspended
    }

    /// @notice The fields an institution signs (EIP-712 type `Interaction`). `kind`: 0 sync, 1 fetch, 2 exchange.
    /// For sync and fetch `counterparty` is the zero address (the platform); for an exchange `institution` is
    /// the consumer and `counterparty` the provider. `units` is the gross value the institution agrees to:
    /// credited for a sync, debited for a fetch or (from the consumer) an exchange. The contract computes
    /// records x rate itself and refuses the interaction when the two differ.
    struct Interaction {
        uint8 kind;
        address institution;
        address counterparty;
        uint16 category;
        uint32 records;
        uint64 units;
        bytes32 dataHash;
        uint256 nonce;
        uint64 deadline;
    }

    /// @notice An interaction with its EIP-712 signature in compact EIP-2098 form.
    struct SignedInteraction {
        Interaction interaction;
        bytes32 r;
        bytes32 vs;
    }

    /// @notice One institution's settlement row for a period: the leaf of the period's settlement tree.
    /// @dev Counts are numbers of interactions; `exchangeInCount` counts exchanges in which the institution
    /// provided the data, `exchangeOutCount` those in which it consumed data. `credited`, `debited`,
    /// `closingBalance` and `closingDebt` are units; the closing values are the state at the period's `toBlock`.
    struct SettlementRow {
        uint256 period;
        address institution;
        uint256 credited;
        uint256 debited;
        uint256 closingBalance;
        uint256 closingDebt;
        uint256 syncCount;
        uint256 fetchCount;
        uint256 exchangeInCount;
        uint256 exchangeOutCount;
    }

    /// @notice An institution's cumulative totals since registration, as `countersOf` returns them. The
    /// figures of a period are `countersOf` at its `toBlock` minus `countersOf` at `fromBlock - 1`.
    /// @dev Units: `syncUnits` credited by syncs; `fetchUnits` debited by fetches; `exchangeInUnits` credited
    /// as provider (after the platform fee); `exchangeOutUnits` debited as consumer; `feeUnits` the platform
    /// fee withheld on the data it provided.
    struct Counters {
        uint256 syncCount;
        uint256 syncUnits;
        uint256 fetchCount;
        uint256 fetchUnits;
        uint256 exchangeInCount;
        uint256 exchangeInUnits;
        uint256 exchangeOutCount;
        uint256 exchangeOutUnits;
        uint256 feeUnits;
    }

    /// @notice One version of a period's settlement root. `finalAt` is the timestamp from which this version,
    /// if it is still the latest, is final; `reasonHash` is zero for version 1.
    struct SettlementVersion {
        bytes32 root;
        bytes32 reasonHash;
        uint64 rowCount;
        uint64 proposedAt;
        uint64 finalAt;
    }

    /*//////////////////////////////////////////////////////////////
                                 EVENTS
    //////////////////////////////////////////////////////////////*/

    /// @notice An institution was registered, with the consent of its key, and is active.
    event InstitutionRegistered(address indexed institution, bytes32 indexed code, string name, uint256 creditLine);
    /// @notice An institution was suspended: it can neither sign nor be credited.
    event InstitutionSuspended(address indexed institution);
    /// @notice A suspended institution was reinstated.
    event InstitutionReinstated(address indexed institution);
    /// @notice An institution's signer key was replaced, by self-rotation or by a completed recovery.
    event SignerRotated(address indexed institution, address indexed previousSigner, address indexed newSigner);
    /// @notice The registrar started a recovery of `institution`'s signer to `newSigner`, effective from `readyAt`.
    event RecoveryStarted(address indexed institution, address indexed newSigner, uint256 readyAt);
    /// @notice A pending recovery was cancelled by the institution's current signer (`by` submitted it).
    event RecoveryCancelled(address indexed institution, address indexed newSigner, address by);
    /// @notice A pending recovery took effect after its delay.
    event RecoveryCompleted(address indexed institution, address indexed previousSigner, address indexed newSigner);
    /// @notice An institution cancelled the unused nonces `mask` of nonce word `wordIndex` (nonces
    /// `wordIndex * 256 + i` for every set bit `i`); `newlyCancelled` are the bits that were not used before.
    event NoncesCancelled(address indexed institution, uint256 indexed wordIndex, uint256 mask, uint256 newlyCancelled);
    /// @notice An institution's credit line was changed.
    event CreditLineChanged(address indexed institution, uint256 previousCreditLine, uint256 newCreditLine);
    /// @notice The units per record of a data category were set (tariff version `version`).
    event TariffRateSet(
        uint256 indexed version, uint16 indexed category, uint256 syncUnitsPerRecord, uint256 fetchUnitsPerRecord, string label
    );
    /// @notice The platform fee on exchanges was set (tariff version `version`).
    event PlatformFeeSet(uint256 indexed version, uint256 feeBps);
    /// @notice A rate was scheduled to take effect when the current period closes, i.e. from period `period`.
    event TariffRateScheduled(
        uint256 indexed period, uint16 indexed category, uint256 syncUnitsPerRecord, uint256 fetchUnitsPerRecord, string label
    );
    /// @notice A platform fee was scheduled to take effect when the current period closes, i.e. from `period`.
    event PlatformFeeScheduled(uint256 indexed period, uint256 feeBps);
    /// @notice One interaction was recorded. The settlement is computable from these events alone:
    /// a sync credits `institution` `units`; a fetch debits it `units`; an exchange debits
    /// `institution` (the consumer) `units` and credits `counterparty` (the provider) `units - fee`.
    event InteractionRecorded(
        address indexed institution,
        address indexed counterparty,
        uint8 kind,
        uint16 category,
        uint32 records,
        uint256 units,
        uint256 fee,
        bytes32 dataHash,
        uint256 nonce
    );
    /// @notice Recording was paused by `account`.
    event Paused(address account);
    /// @notice Recording was resumed by `account`.
    event Unpaused(address account);
    /// @notice Settlement period `period` was closed; it spans blocks `fromBlock`..`toBlock` inclusive. Its
    /// settlement row count (every institution registered by then) is `periodInstitutionCount(period)`.
    /// @dev The signature is unchanged from version 1, so exporters keyed on its topic keep working.
    event PeriodClosed(uint256 indexed period, uint256 fromBlock, uint256 toBlock);
    /// @notice Version 1 of period `period`'s settlement root was proposed; final at `finalAt` unless superseded.
    event SettlementProposed(uint256 indexed period, uint256 version, bytes32 root, uint256 rowCount, uint256 finalAt);
    /// @notice A settlement root not yet final was replaced by version `version`, for the reason `reasonHash`
    /// (keccak256 of a published explanation); the new version is final at `finalAt` unless superseded.
    event SettlementSuperseded(
        uint256 indexed period,
        uint256 version,
        bytes32 previousRoot,
        bytes32 root,
        uint256 rowCount,
        bytes32 reasonHash,
        uint256 finalAt
    );
    /// @notice An institution disputed a recorded interaction (`interactionDigest`, its EIP-712 digest) or, when
    /// that is zero, its statement for `period`; `reasonHash` is keccak256 of its explanation.
    event DisputeFiled(
        address indexed institution, uint256 indexed period, bytes32 indexed interactionDigest, bytes32 reasonHash
    );
    /// @notice The settler recorded a reversal, signed by `institution`, of the interaction with EIP-712 digest
    /// `originalDigest`. The original interaction and its event are unchanged; no units move on chain.
    event ReversalRecorded(
        address indexed institution, bytes32 indexed originalDigest, uint256 units, bytes32 reasonHash, uint256 period
    );

    /*//////////////////////////////////////////////////////////////
                                 ERRORS
    //////////////////////////////////////////////////////////////*/

    /// @notice `institution` is the zero address.
    error InvalidInstitutionAddress(address institution);
    /// @notice A new signer key is the zero address.
    error InvalidSignerAddress(address signer);
    /// @notice An institution code must be non-zero.
    error InvalidInstitutionCode(bytes32 code);
    /// @notice `institution` is already registered.
    error InstitutionAlreadyRegistered(address institution);
    /// @notice `code` is already held by `holder`.
    error InstitutionCodeTaken(bytes32 code, address holder);
    /// @notice `signer` is already the signer of `institution`.
    error SignerAlreadyInUse(address signer, address institution);
    /// @notice `institution` was never registered.
    error InstitutionNotRegistered(address institution);
    /// @notice `institution` is registered but not active.
    error InstitutionNotActive(address institution, InstitutionStatus status);
    /// @notice The institution already has the status the call would set.
    error InstitutionStatusUnchanged(address institution, InstitutionStatus status);
    /// @notice `kind` is not 0 (sync), 1 (fetch) or 2 (exchange).
    error UnknownInteractionKind(uint8 kind);
    /// @notice The counterparty does not fit the kind: zero for sync and fetch, another institution for exchange.
    error InvalidCounterparty(uint8 kind, address institution, address counterparty);
    /// @notice No tariff rate is defined for `category`.
    error UnknownCategory(uint16 category);
    /// @notice `records` is zero or above `max`.
    error RecordsOutOfRange(uint32 records, uint32 max);
    /// @notice The signed interaction's deadline has passed.
    error InteractionExpired(uint64 deadline, uint256 blockTimestamp);
    /// @notice `nonce` of `institution` was used or cancelled.
    error NonceAlreadyUsed(address institution, uint256 nonce);
    /// @notice The interaction was not signed by `institution`'s current signer `expected`.
    error InvalidSigner(address institution, address recovered, address expected);
    /// @notice The units the institution signed differ from records x rate on the tariff in force: the tariff
    /// changed since it signed, or the interaction was priced wrongly. Nothing is recorded.
    error UnitsMismatch(address institution, uint256 nonce, uint256 signedUnits, uint256 computedUnits);
    /// @notice The debit would take the institution's debt beyond its credit line.
    error CreditLineExceeded(address institution, uint256 balance, uint256 debt, uint256 creditLine, uint256 debit);
    /// @notice A cumulative counter of `institution` would overflow its storage field.
    error CountersOverflow(address institution);
    /// @notice `feeBps` is above `max` (100 %).
    error PlatformFeeOutOfRange(uint256 feeBps, uint256 max);
    /// @notice A batch is empty or larger than `max`.
    error BatchSizeOutOfRange(uint256 size, uint256 max);
    /// @notice The current period has no block to close yet.
    error PeriodHasNoBlocks(uint256 period, uint256 startBlock);
    /// @notice `period` is not a closed period (closed periods are 1 .. `currentPeriod - 1`).
    error PeriodNotClosed(uint256 period, uint256 currentPeriod);
    /// @notice A settlement root was already proposed for `period` (version `version`, root `root`).
    error SettlementAlreadyAnchored(uint256 period, uint256 version, bytes32 root);
    /// @notice A settlement root must be non-zero.
    error InvalidSettlementRoot(uint256 period);
    /// @notice The anchored tree has `rowCount` rows but period `period` closed with `institutionCount` institutions.
    error SettlementRowCountMismatch(uint256 period, uint256 rowCount, uint256 institutionCount);
    /// @notice No settlement root was proposed for `period`.
    error SettlementNotAnchored(uint256 period);
    /// @notice Version `version` of `period`'s settlement became final at `finalAt`: it cannot be superseded.
    error SettlementAlreadyFinal(uint256 period, uint256 version, uint256 finalAt);
    /// @notice `period` has no settlement version `version` (it has `latest`).
    error UnknownSettlementVersion(uint256 period, uint256 version, uint256 latest);
    /// @notice Units are not transferable: they move only through recorded interactions.
    error UnitsNotTransferable();
    /// @notice Recording is paused.
    error EnforcedPause();
    /// @notice Recording is not paused.
    error ExpectedPause();
    /// @notice A tariff rate above `max` units per record.
    error RateOutOfRange(uint64 unitsPerRecord, uint64 max);
    /// @notice More than `max` rate changes are already scheduled for the next period.
    error TooManyScheduledRates(uint256 max);
    /// @notice A signed message's deadline has passed.
    error SignatureExpired(uint64 deadline, uint256 blockTimestamp);
    /// @notice The registration was not signed by the key being registered.
    error InvalidRegistrationSigner(address institution, address recovered);
    /// @notice A signed message of `institution` was not signed by its current signer `expected`.
    error InvalidMessageSigner(address institution, address recovered, address expected);
    /// @notice The new signer's proof of possession was signed by `recovered`, not by `newSigner`.
    error InvalidPossessionProof(address newSigner, address recovered);
    /// @notice A signed registry message carries nonce `given`; `institution`'s registry nonce is `expected`.
    error InvalidRegistryNonce(address institution, uint256 given, uint256 expected);
    /// @notice This signed message (EIP-712 digest `digest`) was already submitted.
    error MessageAlreadyUsed(bytes32 digest);
    /// @notice `caller` is not the current signer `signer` of `institution`.
    error NotInstitutionSigner(address institution, address caller, address signer);
    /// @notice A recovery of `institution` to `newSigner` is already pending, effective from `readyAt`.
    error RecoveryAlreadyPending(address institution, address newSigner, uint256 readyAt);
    /// @notice No recovery is pending for `institution`.
    error NoRecoveryPending(address institution);
    /// @notice The recovery of `institution` takes effect at `readyAt`, not yet (now `blockTimestamp`).
    error RecoveryNotReady(address institution, uint256 readyAt, uint256 blockTimestamp);
    /// @notice A nonce cancellation must name at least one nonce.
    error EmptyNonceMask(address institution, uint256 wordIndex);
    /// @notice A delay fixed at deploy is out of range: `name` is `value`, allowed `min`..`max`.
    error DelayOutOfRange(string name, uint256 value, uint256 min, uint256 max);
    /// @notice `period` has not started yet (the current period is `currentPeriod`).
    error PeriodNotStarted(uint256 period, uint256 currentPeriod);
    /// @notice Superseding a settlement root needs a non-zero `reasonHash` (keccak256 of the published reason).
    error SupersedeReasonMissing(uint256 period);
    /// @notice The extension's code was called at its own address instead of through the ledger.
    error ExtensionCalledDirectly();
    /// @notice The interaction with digest `originalDigest` was already reversed.
    error AlreadyReversed(bytes32 originalDigest);
}
